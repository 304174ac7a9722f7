"""What the adaptation scripts share: a private copy of the digits example with ``[adaptation]``
on, the real app in-process, labelled traffic served in requests of 64 samples, and the loop's
state read back through HTTP (``/drift``, ``/adaptation``).

Accuracy is measured on what the service answered, against the digits test labels; the loop
never sees a label.
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.examples import corrupt, load_digits_split
from service.examples.data import Corruption
from service.settings import ServiceSettings

MODEL = "digits"
TOKEN = "adaptation-scripts"
BATCH = 64
MODELS = Path(__file__).resolve().parent.parent / "models"
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def digits_repository(root: Path, trigger: str, cooldown_s: float) -> Path:
    """``root/digits``: the bundled digits model, every batch tapped, adaptation on."""
    shutil.copytree(MODELS / MODEL, root / MODEL)
    config = root / MODEL / "config.toml"
    head = config.read_text().split("[drift]")[0]  # [drift] is the last section
    config.write_text(
        f"{head}[drift]\nmax_overhead = 1.0\n\n[adaptation]\ncapture = 2048\n"
        f'trigger = "{trigger}"\nmin_samples = 512\ncooldown_s = {cooldown_s}\n'
    )
    return root


@contextmanager
def serving(models: Path) -> Iterator[TestClient]:
    """The app on ``models``, its adaptation loop looking every 0.1 s."""
    settings = ServiceSettings(
        grpc_port=0,  # in-process, HTTP only
        models=models,
        admin_token=TOKEN,
        adaptation_interval=0.1,
        poll_interval=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@dataclass(frozen=True)
class Stream:
    """Labelled samples of the digits test split, optionally corrupted (severity 5) and
    restricted to some classes; ``batches()`` cycles through them in a fresh order per pass."""

    name: str
    corruption: Corruption | None = None
    classes: tuple[int, ...] | None = None

    def data(self) -> tuple[F32, I64]:
        _, _, x, y = load_digits_split()
        if self.classes is not None:
            keep = np.isin(y, self.classes)
            x, y = x[keep], y[keep]
        if self.corruption is not None:
            x = corrupt(x, self.corruption, 5)
        return x, y.astype(np.int64)

    def batches(self, seed: int = 0) -> Iterator[tuple[F32, I64]]:
        x, y = self.data()
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(x))
            for start in range(0, len(order) - BATCH + 1, BATCH):
                rows = order[start : start + BATCH]
                yield x[rows], y[rows]


@dataclass(frozen=True)
class Served:
    correct: int
    count: int
    version: str


def serve(client: TestClient, x: F32, y: I64) -> Served:
    """One inference request; how many of its answers were right, and which version served."""
    spec = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    body = orjson.dumps({"inputs": [spec | {"data": x.ravel().tolist()}]})
    response = client.post(f"/v2/models/{MODEL}/infer", content=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    logits = np.asarray(answer["outputs"][0]["data"]).reshape(len(x), -1)
    return Served(int((logits.argmax(axis=1) == y).sum()), len(x), answer["model_version"])


def adaptation(client: TestClient) -> dict[str, Any]:
    """``GET .../adaptation``; its ``decisions`` oldest first."""
    response = client.get(f"/v2/models/{MODEL}/adaptation")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    state["decisions"] = list(reversed(state["decisions"]))
    return state


def drift_ratios(client: TestClient) -> dict[str, float | None]:
    """Per-layer drift / baseline of the serving version's window."""
    response = client.get(f"/v2/models/{MODEL}/drift")
    assert response.status_code == 200, response.text
    return {layer["name"]: layer["drift_ratio"] for layer in response.json()["layers"]}


def reason(decision: dict[str, Any]) -> str:
    """The decisive reason: the last one given (the first only names the alarmed layers)."""
    reasons: list[str] = decision["reasons"]
    return reasons[-1] if len(reasons) > 1 else (reasons[0] if reasons else "")
