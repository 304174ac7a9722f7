"""The closed loop end to end on the digits example: a corruption is recalibrated from traffic
and served, a label shift is refused, ``propose`` writes without serving.

References are independent of the loop: accuracy against the test labels, and a hand
recalibration (the whole corrupted test split streamed to ``/recalibrate``) on another copy
of the repository.
"""

import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi.testclient import TestClient

from service.examples import corrupt, load_digits_split
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, make_client
from tests.helpers import infer_body, output_of

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = load_digits_split()


def _repo(root: Path, trigger: str) -> Path:
    shutil.copytree(BUNDLED_MODELS / "digits", root / "models" / "digits")
    config = root / "models" / "digits" / "config.toml"
    head = config.read_text().split("[drift]")[0]
    config.write_text(
        f"{head}[drift]\nmax_overhead = 1.0\n\n[adaptation]\ncapture = 2048\n"
        f'trigger = "{trigger}"\nmin_samples = 512\ncooldown_s = 3600.0\n'
    )
    return root / "models"


def _serve(client: TestClient, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    labels = []
    for start in range(0, len(x), 64):
        response = client.post("/v2/models/digits/infer", content=infer_body(x[start : start + 64]))
        assert response.status_code == 200, response.text
        labels.append(output_of(response.json()).argmax(axis=1))
    return np.concatenate(labels)


def _decisions(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/v2/models/digits/adaptation")
    assert response.status_code == 200, response.text
    decisions: list[dict[str, Any]] = response.json()["decisions"]
    return decisions


def _until_decided(
    client: TestClient, x: npt.NDArray[np.float32], rounds: int = 12
) -> dict[str, Any]:
    """Serve ``x`` round after round until the loop records a decision."""
    for _ in range(rounds):
        _serve(client, x)
        deadline = time.monotonic() + 5  # the loop looks every 0.1 s; a decision takes ~1 s
        while time.monotonic() < deadline:
            decisions = _decisions(client)
            if decisions:
                return decisions[0]
            time.sleep(0.05)
    raise AssertionError(f"no decision after {rounds} rounds of {len(x)} samples")


def _hand_recalibrated_accuracy(root: Path, x: npt.NDArray[np.float32]) -> float:
    buffer = io.BytesIO()
    np.save(buffer, x)
    with make_client(_repo(root, "off")) as client:
        response = client.post(
            "/v2/models/digits/recalibrate",
            content=buffer.getvalue(),
            headers=ADMIN | {"Content-Type": "application/x-npy"},
        )
        assert response.status_code == 200, response.text
        return float((_serve(client, x) == Y_TEST).mean())


def test_a_corruption_is_recalibrated_from_traffic_and_served(tmp_path: Path) -> None:
    blurred = corrupt(X_TEST, "blur", 5)
    with make_client(_repo(tmp_path / "loop", "activate"), adaptation_interval=0.1) as client:
        before = float((_serve(client, blurred) == Y_TEST).mean())
        decision = _until_decided(client, blurred)
        assert decision["outcome"] == "activated", decision
        assert decision["version"] == 2 and decision["source_version"] == 1
        assert not any(shift["explained"] for shift in decision["traffic"]["label_shift"])
        after = float((_serve(client, blurred) == Y_TEST).mean())
        served = client.post("/v2/models/digits/infer", content=infer_body(blurred[:1])).json()
        versions = client.get("/v2/models/digits/versions").json()
    assert served["model_version"] == "2"
    assert versions["versions"][1]["provenance"]["source"] == "traffic"
    by_hand = _hand_recalibrated_accuracy(tmp_path / "hand", blurred)
    print(f"blur 5: served {before:.3f}, from traffic {after:.3f}, by hand {by_hand:.3f}")
    assert after >= by_hand - 0.02 and after > before + 0.3


def test_a_label_shift_is_rejected_and_nothing_is_written(tmp_path: Path) -> None:
    threes = X_TEST[Y_TEST == 3]
    stream = np.concatenate([threes] * 8)  # one class only, clean
    models = _repo(tmp_path, "activate")
    with make_client(models, adaptation_interval=0.1) as client:
        decision = _until_decided(client, stream)
        accuracy = float((_serve(client, threes) == 3).mean())
        assert client.get("/v2/models/digits/versions").json()["active"] == "1"
    assert decision["outcome"] == "rejected" and decision["version"] is None
    assert any("label shift" in reason for reason in decision["reasons"])
    alarmed = [name for name, layer in decision["alarm"].items() if layer["alarmed"]]
    shifts = {shift["layer"]: shift for shift in decision["traffic"]["label_shift"]}
    assert alarmed and all(shifts[name]["explained"] for name in alarmed)
    assert sorted(p.name for p in (models / "digits").iterdir() if p.name.isdigit()) == ["1"]
    assert accuracy > 0.95


def test_propose_writes_a_version_and_keeps_serving_the_old_one(tmp_path: Path) -> None:
    blurred = corrupt(X_TEST, "blur", 5)
    with make_client(_repo(tmp_path, "propose"), adaptation_interval=0.1) as client:
        decision = _until_decided(client, blurred)
        served = client.post("/v2/models/digits/infer", content=infer_body(blurred[:1])).json()
        listing = client.get("/v2/models/digits/versions").json()
    assert decision["outcome"] == "proposed" and decision["version"] == 2, decision
    assert served["model_version"] == "1" and listing["active"] == "1"
    assert [entry["version"] for entry in listing["versions"]] == ["1", "2"]


def test_recalibrate_from_traffic_on_demand_reports_the_guardrails(tmp_path: Path) -> None:
    blurred = corrupt(X_TEST, "blur", 5)
    with make_client(_repo(tmp_path, "off"), adaptation_interval=0.1) as client:
        url = "/v2/models/digits/recalibrate?source=traffic"
        too_early = client.post(url, headers=ADMIN)
        _serve(client, np.concatenate([blurred, blurred]))
        answer = client.post(url + "&activate=false", headers=ADMIN)
        unauthorized = client.post(url)
        decisions = _decisions(client)
    assert too_early.status_code == 400 and "needs 1024" in too_early.json()["error"]
    assert unauthorized.status_code == 401
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["recalibration"]["version"] == "2" and body["recalibration"]["activated"] is False
    assert body["recalibration"]["samples"] == round(1438 * 0.75)  # the fit share
    assert body["label_shift"] is False and body["traffic"]["samples"] == 1438
    assert all(ratio < 3.0 for ratio in body["candidate"]["drift_ratio"].values())
    assert decisions == []  # trigger off: nothing decided by the loop
