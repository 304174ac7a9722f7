"""The README's drift figures: per-layer drift against its baseline on the digits example.

Through HTTP, on a private copy of ``models/`` with every served batch tapped: the clean test
split (no shift), the test split blurred at severity 5 (a shift), and the same blurred traffic
after a recalibration on the blurred training split. ``tests/drift/test_drift_api.py`` asserts the
same story (clean < 2x baseline, blur > 5x on bn1 and bn2, recalibrated < 2x).

Run: ``python scripts/drift_figures.py > docs/drift-figures.md`` (about 20 s on 2 cores).
"""

import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.examples import corrupt, load_digits_split
from service.settings import ServiceSettings

TOKEN = "drift-figures"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BATCHES, BATCH = 10, 64
F32 = npt.NDArray[np.float32]


def _repo(root: Path, model: str) -> Path:
    shutil.copytree(Path("models") / model, root / model)
    config = root / model / "config.toml"
    head = config.read_text().split("[drift]")[0]  # [drift] is the last section
    config.write_text(f"{head}[drift]\nmax_overhead = 1.0\n")  # tap every batch
    return root


def _send(client: TestClient, model: str, x: F32) -> None:
    for start in range(0, BATCHES * BATCH, BATCH):
        batch = x[start : start + BATCH]
        spec = {"name": "input", "datatype": "FP32", "shape": list(batch.shape)}
        body = orjson.dumps({"inputs": [spec | {"data": batch.ravel().tolist()}]})
        assert client.post(f"/v2/models/{model}/infer", content=body).status_code == 200


def _ratios(client: TestClient, model: str, batches: int) -> dict[str, float]:
    """Per-layer drift / baseline once ``batches`` batches are tapped."""
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = client.get(f"/v2/models/{model}/drift").json()
        ready = all(layer["baseline"] is not None for layer in body["layers"])
        if body["batches_tapped"] == batches and ready:
            return {layer["name"]: layer["drift_ratio"] for layer in body["layers"]}
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def _recalibrate(client: TestClient, model: str, x: F32) -> None:
    buffer = io.BytesIO()
    np.save(buffer, x)
    headers = ADMIN | {"Content-Type": "application/x-npy"}
    response = client.post(
        f"/v2/models/{model}/recalibrate", content=buffer.getvalue(), headers=headers
    )
    assert response.status_code == 200, response.text


def measure(model: str) -> list[tuple[str, dict[str, float]]]:
    x_train, _, x_test, _ = load_digits_split()
    blurred_train, blurred_test = corrupt(x_train, "blur", 5), corrupt(x_test, "blur", 5)
    with tempfile.TemporaryDirectory() as tmp:
        settings = ServiceSettings(models=_repo(Path(tmp), model), admin_token=TOKEN, grpc_port=0)
        with TestClient(create_app(settings)) as client:
            _send(client, model, x_test)
            clean = _ratios(client, model, BATCHES)
            assert client.post(f"/v2/models/{model}/drift/reset", headers=ADMIN).status_code == 200
            _send(client, model, blurred_test)
            shifted = _ratios(client, model, 2 * BATCHES)
            _recalibrate(client, model, blurred_train)
            _send(client, model, blurred_test)
            after = _ratios(client, model, BATCHES)
    return [
        ("clean test split, version 1", clean),
        ("blur 5, version 1", shifted),
        ("blur 5, version 2 (recalibrated on blurred training data)", after),
    ]


def main() -> None:
    print(f"Drift / baseline per layer; {BATCHES} batches of {BATCH} test images each.\n")
    for model in ("digits", "digits_torch"):
        rows = measure(model)
        layers = list(rows[0][1])
        print(f"| {model} | " + " | ".join(layers) + " |")
        print("|---|" + "---|" * len(layers))
        for label, ratios in rows:
            print(f"| {label} | " + " | ".join(f"{ratios[n]:.2f}x" for n in layers) + " |")
        print()


if __name__ == "__main__":
    main()
