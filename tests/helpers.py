"""Test helpers: V2 request bodies, reference modules for the bundled examples."""

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson
import torch
from fastapi.testclient import TestClient

from service.examples.data import load_digits_split, load_wine_split
from service.examples.export import load_module

MODELS = Path(__file__).resolve().parent.parent / "models"
EXAMPLE_MODELS = ("digits", "digits_torch", "wine", "wine_torch", "digits_ln", "digits_ln_torch")


def family(model: str) -> str:
    return model.removesuffix("_torch")


def reference_module(model: str) -> torch.nn.Module:
    """The torch module that was exported, rebuilt from the example's weights, in eval mode."""
    name = family(model)
    return load_module(name, MODELS / f"{name}_torch" / "1" / "model.pt2").eval()


def reference_forward(model: str, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    with torch.no_grad():
        out: npt.NDArray[np.float32] = reference_module(model)(torch.from_numpy(x)).numpy()
    return out


def sample_inputs(model: str, count: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """``count`` realistic but random samples: test-split rows with noise."""
    rng = np.random.default_rng(seed)
    _, _, x_test, _ = load_wine_split() if family(model) == "wine" else load_digits_split()
    rows = x_test[rng.integers(0, len(x_test), count)]
    noise = rng.normal(0.0, 0.05, rows.shape) * (np.abs(rows).mean() + 1e-3)
    return (rows + noise).astype(np.float32)


def infer_body(
    x: npt.NDArray[Any], name: str = "input", datatype: str = "FP32", **extra: Any
) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ],
            **extra,
        }
    )


def output_of(response_json: dict[str, Any], name: str = "logits") -> npt.NDArray[np.float32]:
    for output in response_json["outputs"]:
        if output["name"] == name:
            return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    raise KeyError(name)


def assert_rel_close(actual: npt.NDArray[Any], expected: npt.NDArray[Any], rel: float) -> None:
    """``max|actual - expected| <= rel * max|expected|``: relative to the output's scale.

    Element-wise relative error is meaningless for logits near zero; float32 kernels that
    block a batch differently (torch's convolutions do) differ in the last bits.
    """
    error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected)))
    assert error <= rel * scale, f"max error {error:.3g} > {rel:g} x scale {scale:.3g}"


def settled_drift(
    client: TestClient | httpx.Client, model: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The drift JSON once every served batch is tapped and the baseline (if any) is ready.

    Taps run behind the request path; a test that judges drift, or the loop that reads it, on
    what it served waits for them first (an empty window reports no baseline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v2/models/{model}/drift").json()
        if body["batches_tapped"] == body["batches_seen"] and (
            body["batches_seen"] == 0
            or body["baseline"] is None
            or all(layer["baseline"] is not None for layer in body["layers"])
        ):
            return body
        time.sleep(0.02)
    raise TimeoutError(f"drift of {model} not settled after {timeout} s")
