"""Acceptance of the closed loop on the digits example, in process: clean traffic decides
nothing, three corruptions are recalibrated from traffic and served, label shifts are refused,
a model without reference data is only proposed, a candidate that does not help is rolled back.

Each is judged against references independent of the loop: accuracy against the test labels,
a hand recalibration (the whole corrupted test split streamed to ``/recalibrate`` on another
copy of the repository), the original model file run by onnxruntime, and the files on disk.
Traffic is bounded by counts: a decision needs the alarm (a window of ``min_samples``, 512)
and then ``2 * min_samples`` captured after its onset, about 1,600 samples; the tests allow
six passes of the test split (4,314 samples).
"""

import time
from pathlib import Path

import numpy as np
import pytest

from service.examples import corrupt
from tests.adaptation.adaptation_support import (
    DEADLINE_S,
    MIN_SAMPLES,
    X_TEST,
    Y_TEST,
    active,
    adaptation,
    decisions,
    digits_repo,
    feed,
    hand_recalibrated_accuracy,
    original_predictions,
    serve,
    served,
    until_decisions,
    version_folders,
)
from tests.conftest import make_client
from tests.helpers import settled_drift


def test_clean_traffic_decides_nothing_over_twenty_windows(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    passes = -(-20 * MIN_SAMPLES // len(X_TEST))  # 15 passes: 10,785 samples
    with make_client(models, adaptation_interval=0.1) as client:
        accuracy = []
        for _ in range(passes):  # the loop sees every window: taps landed, then one poll
            accuracy.append(float((serve(client, X_TEST) == Y_TEST).mean()))
            drift = settled_drift(client, "digits", DEADLINE_S)
            time.sleep(0.12)
        report = adaptation(client)
        version, _ = served(client, X_TEST[:1])
    assert report["capture"]["seen"] == passes * len(X_TEST) >= 20 * MIN_SAMPLES
    assert report["decisions"] == [] and not report["alarmed"]
    assert version == "1" and active(models) == 1 and version_folders(models) == [1]
    # The drift monitor agrees: a full window, under the alarm on every layer.
    for layer in drift["layers"]:
        assert layer["window_samples"] >= MIN_SAMPLES
        assert layer["drift"] < 3.0 * layer["baseline"]["drift"], layer
    assert min(accuracy) == max(accuracy) > 0.95


@pytest.mark.parametrize("kind", ["contrast", "blur", "brightness"])
def test_a_corruption_is_recalibrated_from_traffic_and_served(tmp_path: Path, kind: str) -> None:
    x = corrupt(X_TEST, kind, 5)  # type: ignore[arg-type]
    models = digits_repo(tmp_path / "loop", "activate")
    with make_client(models, adaptation_interval=0.1) as client:
        before = float((original_predictions(x) == Y_TEST).mean())
        sent = feed([client], x)
        decision = decisions(client)[0]
        after = float((serve(client, x) == Y_TEST).mean())
        version, _ = served(client, x[:1])
        listing = client.get("/v2/models/digits/versions").json()
    assert decision["outcome"] == "activated", decision
    assert decision["version"] == 2 and decision["source_version"] == 1
    assert decision["traffic"]["samples"] >= 2 * MIN_SAMPLES and sent <= 6 * len(x)
    assert not any(shift["explained"] for shift in decision["traffic"]["label_shift"])
    assert version == "2" and active(models) == 2 and listing["active"] == "2"
    assert listing["versions"][1]["provenance"]["source"] == "traffic"
    by_hand = hand_recalibrated_accuracy(tmp_path / "hand", x)
    print(f"{kind} 5: served {before:.3f}, from traffic {after:.3f}, by hand {by_hand:.3f}")
    assert after >= by_hand - 0.02 and after > before + 0.3


@pytest.mark.parametrize("classes", [(3,), (0, 1)], ids=["one class", "two classes"])
def test_a_label_shift_is_rejected_and_nothing_is_written(
    tmp_path: Path, classes: tuple[int, ...]
) -> None:
    chosen = np.isin(Y_TEST, classes)
    x, y = np.concatenate([X_TEST[chosen]] * 8), np.concatenate([Y_TEST[chosen]] * 8)
    models = digits_repo(tmp_path, "activate")
    with make_client(models, adaptation_interval=0.1) as client:
        feed([client], x)  # clean, from ``classes`` only
        decision = decisions(client)[0]
        after = serve(client, x)
        version, _ = served(client, x[:1])
    assert decision["outcome"] == "rejected" and decision["version"] is None, decision
    assert any("label shift" in reason for reason in decision["reasons"])
    alarmed = [name for name, layer in decision["alarm"].items() if layer["alarmed"]]
    shifts = {shift["layer"]: shift for shift in decision["traffic"]["label_shift"]}
    assert alarmed and all(shifts[name]["explained"] for name in alarmed)
    assert all(shift["reweighted"] < shift["drift"] for shift in shifts.values())
    predicted = decision["traffic"]["class_distribution"]
    assert sum(predicted[c] for c in classes) > 0.9
    assert version == "1" and active(models) == 1
    assert [p.name for p in (models / "digits").iterdir() if p.is_dir()] == ["1"]
    # Still the original model: same accuracy as version 1 run outside the server.
    original = float((original_predictions(x) == y).mean())
    assert abs(float((after == y).mean()) - original) < 0.005 and original > 0.95


def test_a_model_without_reference_data_is_only_proposed(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    (models / "digits" / "1" / "reference.npy").unlink()
    blurred = corrupt(X_TEST, "blur", 5)
    with make_client(models, adaptation_interval=0.1) as client:
        feed([client], blurred)
        decision = decisions(client)[0]
        version, _ = served(client, blurred[:1])
    assert decision["outcome"] == "proposed" and decision["version"] == 2, decision
    assert "no reference data: the label-shift test cannot run" in decision["reasons"]
    assert any("proposed instead of activated" in reason for reason in decision["reasons"])
    assert decision["traffic"] is None
    assert version == "1" and active(models) == 1 and version_folders(models) == [1, 2]


def test_a_candidate_whose_drift_stays_high_is_rolled_back(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    blurred, low_contrast = corrupt(X_TEST, "blur", 5), corrupt(X_TEST, "contrast", 5)
    with make_client(models, adaptation_interval=0.1) as client:
        feed([client], blurred, chunk=128)  # version 2 is fitted to blur and activated
        activated = decisions(client)[0]
        # At most one chunk of blur reached version 2, fewer than min_samples: its watch is
        # still open when another corruption arrives.
        watching = adaptation(client)["watching"]
        serve(client, low_contrast)  # 719 samples, more than min_samples
        rolled_back = until_decisions(client, 2)[0]
        report = adaptation(client)
        version, predictions = served(client, low_contrast[:64])
        metrics = client.get("/metrics").text
    assert activated["outcome"] == "activated" and activated["version"] == 2, activated
    assert watching == {"version": "2", "previous": "1"}
    assert rolled_back["outcome"] == "rolled_back", rolled_back
    assert rolled_back["source_version"] == 1 and rolled_back["version"] == 2  # as activated
    assert any(layer["alarmed"] for layer in rolled_back["alarm"].values())
    assert report["watching"] is None and len(report["decisions"]) == 2
    assert version == "1" and active(models) == 1 and version_folders(models) == [1, 2]
    assert np.array_equal(predictions, original_predictions(low_contrast[:64]))
    assert 'bnserve_adaptations_total{model="digits",outcome="rolled_back"} 1.0' in metrics
