"""Per-layer drift through HTTP: JSON, reset, Prometheus, sampling.

The reference for every drift value is an independent float64 computation: forward pre-hooks
on the original torch module (rebuilt from the example's weights, run in float64) record each
BatchNorm input of the same traffic; the decayed window is computed in closed form (batch ``k``
weighs ``0.5 ** (samples after it / half_life)``) and scored in numpy with the formulas of
README "Drift" (written out again here, not imported from ``service.stats.drift``).
With ``max_overhead >= 1`` every batch is tapped in order, and sequential requests are one
batch each, so the served window and the reference see the same batches.
"""

import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from service.examples import corrupt, load_digits_split
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, make_client
from tests.helpers import infer_body, reference_module
from tests.recalibration.recalibration_support import npy_body, recalibrate

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LAYERS = ["bn1", "bn2", "fc_bn"]
GAUGES = {  # Prometheus family -> key of a layer entry in the JSON
    "bnserve_bn_drift": "drift",
    "bnserve_bn_drift_mean_shift": "mean_shift",
    "bnserve_bn_drift_log_var_ratio": "log_var_ratio",
    "bnserve_bn_drift_window_samples": "window_samples",
}
REL = 1e-4


# --- repository, traffic ---------------------------------------------------------------------


def drift_repo(tmp_path: Path, models: Iterable[str], drift: str) -> Path:
    """A repository with only ``models`` (fewer baselines to compute at startup), each with
    its ``[drift]`` section replaced by ``drift`` (TOML lines)."""
    root = tmp_path / "models"
    for model in models:
        shutil.copytree(BUNDLED_MODELS / model, root / model)
        config = root / model / "config.toml"
        head = config.read_text().split("[drift]")[0]  # [drift] is the last section
        config.write_text(f"{head}[drift]\n{drift}\n")
    return root


def digits() -> tuple[F32, F32]:
    """(training, test) digit images."""
    x_train, _, x_test, _ = load_digits_split()
    return x_train, x_test


def send(client: TestClient, model: str, x: F32, sizes: Sequence[int]) -> list[F32]:
    """Sequential requests of ``sizes`` consecutive rows of ``x``: one batch each."""
    batches, start = [], 0
    for size in sizes:
        batch = x[start : start + size]
        assert len(batch) == size, "not enough rows for the traffic"
        response = client.post(f"/v2/models/{model}/infer", content=infer_body(batch))
        assert response.status_code == 200, response.text
        batches.append(batch)
        start += size
    return batches


def drift_json(client: TestClient, model: str) -> dict[str, Any]:
    response = client.get(f"/v2/models/{model}/drift")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_taps(
    client: TestClient, model: str, batches: int, timeout: float = 30.0
) -> dict[str, Any]:
    """The drift JSON once ``batches`` batches are tapped and the baseline (if any) is ready."""
    deadline = time.monotonic() + timeout
    while True:
        body = drift_json(client, model)
        baseline_ready = body["baseline"] is None or all(
            layer["baseline"] is not None for layer in body["layers"]
        )
        if body["batches_tapped"] == batches and baseline_ready:
            return body
        assert body["batches_tapped"] <= batches, body
        assert time.monotonic() < deadline, f"taps not landed after {timeout} s: {body}"
        time.sleep(0.02)


def by_layer(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {layer["name"]: layer for layer in body["layers"]}


# --- the independent float64 reference -------------------------------------------------------


class ReferenceDrift:
    """Drift of the original torch module's BatchNorm inputs over the batches ``feed`` gets."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self.module = reference_module("digits").double().eval()
        self.norms = {
            name: module
            for name, module in self.module.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        }
        self.sizes: list[int] = []
        self.values: dict[str, list[F64]] = {name: [] for name in self.norms}
        for name, module in self.norms.items():
            module.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str) -> Any:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            z = args[0].detach().numpy().astype(np.float64)
            # (N, C, *spatial) -> (C, N * positions): every value of a channel in one row
            self.values[name].append(np.moveaxis(z, 1, 0).reshape(z.shape[1], -1))

        return record

    def feed(self, batch: F32) -> None:
        with torch.no_grad():
            self.module(torch.from_numpy(batch.astype(np.float64)))
        self.sizes.append(len(batch))

    def layer(self, name: str) -> dict[str, Any]:
        sizes = np.array(self.sizes, dtype=np.float64)
        later = np.cumsum(sizes[::-1])[::-1] - sizes  # samples tapped after each batch
        weights = 0.5 ** (later / self.half_life)
        values = self.values[name]
        count = sum(w * v.shape[1] for w, v in zip(weights, values, strict=True))
        mean = sum(w * v.sum(axis=1) for w, v in zip(weights, values, strict=True)) / count
        var = (
            sum(
                w * ((v - mean[:, None]) ** 2).sum(axis=1)
                for w, v in zip(weights, values, strict=True)
            )
            / count
        )
        norm = self.norms[name]
        assert norm.running_mean is not None and norm.running_var is not None
        stored = norm.running_var.numpy() + norm.eps
        d = (mean - norm.running_mean.numpy()) / np.sqrt(stored)
        rho = (var + norm.eps) / stored
        w2 = np.sqrt(d**2 + (np.sqrt(rho) - 1.0) ** 2)
        return {
            "window_samples": float(np.sum(weights * sizes)),
            "drift": float(np.sqrt(np.mean(w2**2))),
            "mean_shift": float(np.sqrt(np.mean(d**2))),
            "log_var_ratio": float(np.sqrt(np.mean(np.log(rho) ** 2))),
            "w2": w2,
            "mean": mean,
            "var": var,
        }


def assert_layer_matches(served: dict[str, Any], expected: dict[str, Any]) -> None:
    name = served["name"]
    for key in ("window_samples", "drift", "mean_shift", "log_var_ratio"):
        assert served[key] == pytest.approx(expected[key], rel=REL), (name, key)
    w2 = expected["w2"]
    # the argmax itself; a near-tie (within the tolerance) may go either way
    assert served["worst_channel"] == int(np.argmax(w2)) or (
        w2[served["worst_channel"]] >= (1 - REL) * w2.max()
    ), name
    assert served["worst_channel_drift"] == pytest.approx(w2.max(), rel=REL), name
    channels = served["per_channel"]
    np.testing.assert_allclose(channels["var"], expected["var"], rtol=REL, err_msg=name)
    # a channel mean near zero has no relative precision: relative to the layer's scale too
    scale = float(np.abs(expected["mean"]).max())
    np.testing.assert_allclose(
        channels["mean"], expected["mean"], rtol=REL, atol=REL * scale, err_msg=name
    )
    np.testing.assert_allclose(channels["w2"], w2, rtol=REL, err_msg=name)


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["digits", "digits_torch"])
def test_drift_equals_float64_hooks_on_the_torch_module(tmp_path: Path, model: str) -> None:
    half_life = 64.0
    repo = drift_repo(tmp_path, [model], f"half_life = {half_life}\nmax_overhead = 1.0")
    _, x_test = digits()
    blurred = corrupt(x_test, "blur", 3)
    # Clean and blurred batches alternate: with a short half-life the window's mixture of the
    # two, and so every score, depends on the decay and on the order of the batches.
    sizes = [1, 7, 64, 23, 2, 48, 64, 5, 31, 64, 12, 40]
    reference = ReferenceDrift(half_life)
    with make_client(repo) as client:
        start = 0
        for index, size in enumerate(sizes):
            source = x_test if index % 2 == 0 else blurred
            (batch,) = send(client, model, source[start:], [size])
            reference.feed(batch)
            start += size
        body = wait_for_taps(client, model, len(sizes))
    assert body["version"] == "1" and body["half_life"] == half_life
    assert body["batches_seen"] == body["batches_tapped"] == len(sizes)
    assert body["samples_seen"] == body["samples_tapped"] == sum(sizes)
    served = by_layer(body)
    assert list(served) == LAYERS
    for name in LAYERS:
        assert_layer_matches(served[name], reference.layer(name))


def assert_near_baseline(body: dict[str, Any]) -> None:
    for layer in body["layers"]:
        assert layer["baseline"] is not None, layer["name"]
        assert layer["drift_ratio"] == pytest.approx(layer["drift"] / layer["baseline"]["drift"])
        assert layer["drift_ratio"] < 2.0, (body["version"], layer["name"], layer["drift_ratio"])


@pytest.mark.parametrize("model", ["digits", "digits_torch"])
def test_shift_raises_drift_and_recalibration_brings_it_back(tmp_path: Path, model: str) -> None:
    repo = drift_repo(tmp_path, [model], "max_overhead = 1.0")  # default half-life (4096)
    x_train, x_test = digits()
    shifted_train, shifted_test = corrupt(x_train, "blur", 5), corrupt(x_test, "blur", 5)
    sizes = [64] * 10  # 640 samples
    with make_client(repo) as client:
        send(client, model, x_test, sizes)  # reference-like traffic: the held-out clean split
        clean = wait_for_taps(client, model, len(sizes))
        assert clean["baseline"] == "reference.npy (1078 samples)"
        assert all(layer["window_samples"] > 512 for layer in clean["layers"])
        assert_near_baseline(clean)

        assert client.post(f"/v2/models/{model}/drift/reset", headers=ADMIN).status_code == 200
        send(client, model, shifted_test, sizes)
        shifted = by_layer(wait_for_taps(client, model, 2 * len(sizes)))
        assert shifted["bn1"]["drift_ratio"] > 5.0, shifted["bn1"]
        assert shifted["bn2"]["drift_ratio"] > 5.0, shifted["bn2"]

        response = recalibrate(client, model, npy_body(shifted_train))
        assert response.status_code == 200, response.text
        restarted = drift_json(client, model)  # a new version: a new, empty window
        assert restarted["version"] == "2"
        assert restarted["baseline"] == f"reference.npy ({len(shifted_train)} samples)"
        counters = ("batches_seen", "batches_tapped", "samples_seen", "samples_tapped")
        assert [restarted[key] for key in counters] == [0, 0, 0, 0]
        for layer in restarted["layers"]:
            assert layer["window_samples"] == 0.0 and layer["drift"] is None, layer
        by_version = client.get(f"/v2/models/{model}/versions/2/drift")
        assert by_version.status_code == 200 and by_version.json() == restarted

        send(client, model, shifted_test, sizes)  # the same shifted traffic
        recalibrated = wait_for_taps(client, model, len(sizes))
        assert recalibrated["version"] == "2"
        assert recalibrated["samples_tapped"] == sum(sizes)
        assert_near_baseline(recalibrated)
        stored = by_layer(recalibrated)
        for name in ("bn1", "bn2"):  # well below the version 1 drift on the same traffic
            assert stored[name]["drift"] < shifted[name]["drift"] / 5, name


def test_reset_needs_the_admin_token_and_empties_the_window(tmp_path: Path) -> None:
    repo = drift_repo(tmp_path, ["digits"], "max_overhead = 1.0")
    _, x_test = digits()
    url = "/v2/models/digits/drift/reset"
    with make_client(repo) as client:
        send(client, "digits", x_test, [16, 16])
        before = wait_for_taps(client, "digits", 2)
        assert client.post(url).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert client.post(url, headers=wrong).status_code == 401
        assert drift_json(client, "digits") == before  # refused: nothing changed

        response = client.post(url, headers=ADMIN)
        assert response.status_code == 200, response.text
        for body in (response.json(), drift_json(client, "digits")):
            for layer in body["layers"]:
                assert layer["window_samples"] == 0.0, layer
                assert layer["drift"] is layer["drift_ratio"] is layer["per_channel"] is None

        send(client, "digits", x_test[32:], [8])  # the window restarts with the next batch
        after = wait_for_taps(client, "digits", 3)
        for layer in after["layers"]:
            assert layer["window_samples"] == pytest.approx(8.0)  # one batch, no decay yet
            assert layer["drift"] is not None


def test_model_with_drift_disabled_answers_with_a_clear_client_error(tmp_path: Path) -> None:
    repo = drift_repo(tmp_path, ["digits"], "enabled = false")
    with make_client(repo) as client:
        for url in ("/v2/models/digits/drift", "/v2/models/digits/versions/1/drift"):
            response = client.get(url)
            assert response.status_code == 400, response.text
            assert "drift" in response.json()["error"] and "enabled = false" in response.text
        assert client.post("/v2/models/digits/drift/reset", headers=ADMIN).status_code == 400
        assert client.get("/v2/models/nope/drift").status_code == 404
        send(client, "digits", digits()[1], [4])  # serving is unaffected
        assert "bnserve_bn_drift{" not in client.get("/metrics").text


def drift_series(client: TestClient) -> dict[tuple[str, str, str, str], float]:
    """``(family, model, version, layer) -> value`` of every drift gauge on ``/metrics``."""
    response = client.get("/metrics")
    assert response.status_code == 200
    series = {}
    for family in text_string_to_metric_families(response.text):
        if family.name.startswith("bnserve_bn_drift"):
            assert family.type == "gauge"
            for sample in family.samples:
                labels = sample.labels
                assert set(labels) == {"model", "version", "layer"}  # no channel labels
                key = (sample.name, labels["model"], labels["version"], labels["layer"])
                series[key] = sample.value
    return series


def expected_series(body: dict[str, Any]) -> dict[tuple[str, str, str, str], float]:
    """The gauges the JSON ``body`` implies: null scores are left out."""
    expected = {}
    for layer in body["layers"]:
        key = (body["name"], body["version"], layer["name"])
        for name, field in GAUGES.items():
            if layer[field] is not None:
                expected[(name, *key)] = float(layer[field])
        if layer["baseline"] is not None:
            expected[("bnserve_bn_drift_baseline", *key)] = float(layer["baseline"]["drift"])
    return expected


def test_prometheus_gauges_equal_the_json(tmp_path: Path) -> None:
    repo = drift_repo(tmp_path, ["digits", "digits_torch"], "max_overhead = 1.0")
    (repo / "digits_torch" / "1" / "reference.npy").unlink()  # no reference: no baseline
    x_train, x_test = digits()
    sizes = [32, 5, 64]
    with make_client(repo) as client:
        for model in ("digits", "digits_torch"):
            send(client, model, x_test, sizes)
        bodies = [wait_for_taps(client, m, len(sizes)) for m in ("digits", "digits_torch")]
        assert bodies[0]["baseline"] is not None and bodies[1]["baseline"] is None
        expected = expected_series(bodies[0]) | expected_series(bodies[1])
        assert sum(key[0] == "bnserve_bn_drift_baseline" for key in expected) == len(LAYERS)
        assert not any(
            k[0] == "bnserve_bn_drift_baseline" and k[1] == "digits_torch" for k in expected
        )
        assert len(expected) == 2 * len(LAYERS) * len(GAUGES) + len(LAYERS)
        assert drift_series(client) == pytest.approx(expected, rel=1e-12)

        response = recalibrate(client, "digits", npy_body(corrupt(x_train, "blur", 5)))
        assert response.status_code == 200, response.text
        send(client, "digits", x_test, sizes)
        body = wait_for_taps(client, "digits", len(sizes))
        assert body["version"] == "2"
        series = drift_series(client)
        digits_series = {key: v for key, v in series.items() if key[1] == "digits"}
        assert {key[2] for key in digits_series} == {"2"}  # version 1's series are gone
        assert digits_series == pytest.approx(expected_series(body), rel=1e-12)
        assert ("bnserve_bn_drift_baseline", "digits", "2", "bn1") in digits_series


def test_default_budget_taps_a_share_of_a_burst(tmp_path: Path) -> None:
    """Not a timing assertion: the budget (3 % by default) taps some batches, not all."""
    repo = drift_repo(tmp_path, ["digits"], "")  # defaults
    _, x_test = digits()
    with make_client(repo) as client:
        deadline = time.monotonic() + 20.0
        body = drift_json(client, "digits")
        while body["batches_tapped"] == 0 or body["batches_seen"] < 100:
            assert time.monotonic() < deadline, f"no batch tapped: {body}"
            send(client, "digits", x_test, [8] * 25)
            body = drift_json(client, "digits")
    assert body["max_overhead"] == 0.03 and body["half_life"] == 4096.0
    assert 0 < body["batches_tapped"] < body["batches_seen"]
    assert body["samples_seen"] == 8 * body["batches_seen"]
    assert body["samples_tapped"] == 8 * body["batches_tapped"]
    for layer in body["layers"]:  # the sampling shows in the window count
        assert 0.0 < layer["window_samples"] <= body["samples_tapped"]
