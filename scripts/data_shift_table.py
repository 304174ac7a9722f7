"""The README's data-shift table, measured through HTTP on a private copy of ``models/``.

For each corruption (severity 5) of the digits test split: accuracy of the served model before,
then after streaming the corrupted split to the recalibration endpoint, then roll back.
Run: ``python scripts/data_shift_table.py`` (about a minute on 2 cores).
"""

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.examples import corrupt, load_digits_split
from service.settings import ServiceSettings

TOKEN = "data-shift-table"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def accuracy(client: TestClient, model: str, x: np.ndarray, y: np.ndarray) -> float:
    hits = 0
    for start in range(0, len(x), 64):
        batch = x[start : start + 64]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape),
                            "data": batch.ravel().tolist()}]}  # fmt: skip
        response = client.post(f"/v2/models/{model}/infer", content=orjson.dumps(body)).json()
        logits = np.asarray(response["outputs"][0]["data"]).reshape(len(batch), -1)
        hits += int((logits.argmax(1) == y[start : start + 64]).sum())
    return hits / len(x)


def main() -> None:
    _, _, x_test, y_test = load_digits_split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        shutil.copytree(Path(__file__).resolve().parent.parent / "models", root)
        app = create_app(
            ServiceSettings(models=root, admin_token=TOKEN, poll_interval=0, grpc_port=0)
        )
        with TestClient(app) as client:
            print("| model | corruption (severity 5) | clean | shifted | recalibrated | gain |")
            print("|---|---|---|---|---|---|")
            for model in ("digits", "digits_torch"):
                clean = accuracy(client, model, x_test, y_test)
                for kind in ("contrast", "blur", "brightness"):
                    shifted = corrupt(x_test, kind, 5)
                    before = accuracy(client, model, shifted, y_test)
                    buffer = io.BytesIO()
                    np.save(buffer, shifted)
                    headers = ADMIN | {"Content-Type": "application/x-npy"}
                    report = client.post(
                        f"/v2/models/{model}/recalibrate",
                        content=buffer.getvalue(),
                        headers=headers,
                    ).json()
                    after = accuracy(client, model, shifted, y_test)
                    client.post(f"/v2/models/{model}/versions/1/activate", headers=ADMIN)
                    print(
                        f"| {model} | {kind} | {clean:.1%} | {before:.1%} | {after:.1%} "
                        f"| {100 * (after - before):+.1f} points (version {report['version']}) |"
                    )


if __name__ == "__main__":
    main()
