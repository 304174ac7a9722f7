"""What the adaptation tests share: a digits repository with ``[adaptation]``, serving a stream,
waiting for the loop's decisions, and the independent references the loop is judged against
(the test labels, a hand recalibration, the original model file run by onnxruntime).

Helpers take the in-process ``TestClient`` or an ``httpx.Client`` with ``base_url`` on a
real ``bnserve serve``. Waits have generous deadlines, only so that a
broken loop fails instead of hanging; what is asserted is bounded by counts of samples.
"""

import io
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from fastapi.testclient import TestClient

from service.examples import load_digits_split
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, make_client
from tests.helpers import infer_body, output_of, settled_drift

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = load_digits_split()
MIN_SAMPLES = 512
Client = httpx.Client | TestClient
"""The in-process app, or a real server through ``base_url``."""
DEADLINE_S = 60.0  # against hanging only: a decision takes about a second


def digits_repo(root: Path, trigger: str, cooldown_s: float = 3600.0) -> Path:
    """A copy of the digits example under ``root/models`` that adapts with ``trigger``."""
    shutil.copytree(BUNDLED_MODELS / "digits", root / "models" / "digits")
    config = root / "models" / "digits" / "config.toml"
    head = config.read_text().split("[drift]")[0]
    config.write_text(
        f"{head}[drift]\nmax_overhead = 1.0\n\n[adaptation]\ncapture = 2048\n"
        f'trigger = "{trigger}"\nmin_samples = {MIN_SAMPLES}\ncooldown_s = {cooldown_s}\n'
    )
    return root / "models"


def serve(client: Client, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Send ``x`` in requests of 64 samples; the predicted classes."""
    return np.concatenate(
        [served(client, x[start : start + 64])[1] for start in range(0, len(x), 64)]
    )


def served(client: Client, x: npt.NDArray[np.float32]) -> tuple[str, npt.NDArray[np.int64]]:
    """One request: the version that answered it and its predicted classes."""
    response = client.post("/v2/models/digits/infer", content=infer_body(x))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], output_of(body).argmax(axis=1)


def adaptation(client: Client) -> dict[str, Any]:
    response = client.get("/v2/models/digits/adaptation")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def decisions(client: Client) -> list[dict[str, Any]]:
    """The loop's decisions, newest first."""
    found: list[dict[str, Any]] = adaptation(client)["decisions"]
    return found


def until_decisions(client: Client, count: int = 1) -> list[dict[str, Any]]:
    """Wait, sending nothing, until the loop has recorded ``count`` decisions."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = decisions(client)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} decisions after {DEADLINE_S} s: {found}")


def feed(
    clients: Sequence[Client], x: npt.NDArray[np.float32], chunk: int = 256, passes: int = 6
) -> int:
    """Send up to ``passes`` passes of ``x``, ``chunk`` samples at a time to every client in
    turn, until each has a decision; the samples each was sent.

    After every chunk the loops catch up: the wait lasts while a loop holds what it needs to
    decide without more traffic (an alarm and ``2 * min_samples`` captured after its onset),
    so a decision never waits on traffic and no traffic is sent past one."""
    stream = np.concatenate([x] * passes)
    for start in range(0, len(stream), chunk):
        for client in clients:
            serve(client, stream[start : start + chunk])
        reports = [_settled(client) for client in clients]
        if all(report["decisions"] for report in reports):
            return min(start + chunk, len(stream))
    raise AssertionError(f"no decision after {passes} passes of {len(x)} samples")


def _settled(client: Client) -> dict[str, Any]:
    settled_drift(client, "digits", DEADLINE_S)  # the loop judges what the taps saw
    deadline = time.monotonic() + DEADLINE_S
    while True:
        time.sleep(0.12)  # more than one poll of the loop (0.1 s apart in these tests)
        report = adaptation(client)
        ready = report["alarmed"] and report["capture"]["held"] >= 2 * MIN_SAMPLES
        if report["decisions"] or not ready or time.monotonic() > deadline:
            return report


def active(models: Path) -> int:
    return int((models / "digits" / "active").read_text())


def version_folders(models: Path) -> list[int]:
    return sorted(int(p.name) for p in (models / "digits").iterdir() if p.name.isdigit())


def onnx_logits(path: Path, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The model file at ``path``, run by onnxruntime outside the server."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    parts = [session.run(["logits"], {"input": x[i : i + 64]})[0] for i in range(0, len(x), 64)]
    logits: npt.NDArray[np.float32] = np.concatenate(parts)
    return logits


def original_predictions(x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """What the bundled version 1 predicts, computed outside the server."""
    predictions: npt.NDArray[np.int64] = onnx_logits(
        BUNDLED_MODELS / "digits" / "1" / "model.onnx", x
    ).argmax(axis=1)
    return predictions


def hand_recalibrated_accuracy(root: Path, x: npt.NDArray[np.float32]) -> float:
    """Accuracy on ``x`` after streaming all of ``x`` to ``/recalibrate`` on another copy."""
    buffer = io.BytesIO()
    np.save(buffer, x)
    with make_client(digits_repo(root, "off")) as client:
        response = client.post(
            "/v2/models/digits/recalibrate",
            content=buffer.getvalue(),
            headers=ADMIN | {"Content-Type": "application/x-npy"},
        )
        assert response.status_code == 200, response.text
        return float((serve(client, x) == Y_TEST).mean())
