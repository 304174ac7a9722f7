"""The closed loop's other triggers: ``propose`` writes a candidate without serving it, and
``POST .../recalibrate?source=traffic`` computes one on demand. The ``activate`` trigger's
acceptance (corruptions, label shifts, rollback) is in ``test_adaptation_acceptance.py``.
"""

from pathlib import Path

import numpy as np

from service.examples import corrupt
from tests.adaptation.adaptation_support import (
    ADMIN,
    X_TEST,
    decisions,
    digits_repo,
    feed,
    serve,
    served,
    version_folders,
)
from tests.conftest import make_client


def test_propose_writes_a_version_and_keeps_serving_the_old_one(tmp_path: Path) -> None:
    blurred = corrupt(X_TEST, "blur", 5)
    models = digits_repo(tmp_path, "propose")
    with make_client(models, adaptation_interval=0.1) as client:
        feed([client], blurred)
        decision = decisions(client)[0]
        version, _ = served(client, blurred[:1])
        listing = client.get("/v2/models/digits/versions").json()
    assert decision["outcome"] == "proposed" and decision["version"] == 2, decision
    assert version == "1" and listing["active"] == "1"
    assert [entry["version"] for entry in listing["versions"]] == ["1", "2"]
    assert version_folders(models) == [1, 2]


def test_recalibrate_from_traffic_on_demand_reports_the_guardrails(tmp_path: Path) -> None:
    blurred = corrupt(X_TEST, "blur", 5)
    with make_client(digits_repo(tmp_path, "off"), adaptation_interval=0.1) as client:
        url = "/v2/models/digits/recalibrate?source=traffic"
        too_early = client.post(url, headers=ADMIN)
        serve(client, np.concatenate([blurred, blurred]))
        answer = client.post(url + "&activate=false", headers=ADMIN)
        unauthorized = client.post(url)
        decided = decisions(client)
    assert too_early.status_code == 400 and "needs 1024" in too_early.json()["error"]
    assert unauthorized.status_code == 401
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["recalibration"]["version"] == "2" and body["recalibration"]["activated"] is False
    assert body["recalibration"]["samples"] == round(1438 * 0.75)  # the fit share
    assert body["label_shift"] is False and body["traffic"]["samples"] == 1438
    assert all(ratio < 3.0 for ratio in body["candidate"]["drift_ratio"].values())
    assert decided == []  # trigger off: nothing decided by the loop
