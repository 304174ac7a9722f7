"""Pre-encoded inference requests for the load generator: V2 JSON and V2 binary tensor bodies.

The binary form is what ``tritonclient.http`` sends: a JSON header whose input carries
``parameters.binary_data_size``, the raw little-endian bytes after it, the header's length in
``Inference-Header-Content-Length``, and ``binary_data_output`` so outputs come back raw too.
"""

import json

import numpy as np
import numpy.typing as npt

from service.bench.loadgen import encode_request
from service.bench.models import BUNDLED_MODELS, DIGITS
from service.examples.export import INPUT_NAME


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def json_request(model: str, x: npt.NDArray[np.float32]) -> bytes:
    """``POST /v2/models/{model}/infer`` with ``x`` as JSON ``data`` (shortest float repr)."""
    document = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": [float(v) for v in x.ravel()],
            }
        ]
    }
    body = json.dumps(document, separators=(",", ":")).encode()
    return encode_request(infer_path(model), body)


def binary_request(model: str, x: npt.NDArray[np.float32]) -> bytes:
    """The same request with the binary tensor data extension, outputs asked for as binary."""
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    document = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(document, separators=(",", ":")).encode()
    return encode_request(
        infer_path(model),
        header + raw,
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def digits_sample() -> npt.NDArray[np.float32]:
    """One real digit image ``(1, 1, 8, 8)``, the bundled model's first reference sample."""
    reference = np.load(BUNDLED_MODELS / DIGITS / "1" / "reference.npy")
    return np.ascontiguousarray(reference[:1], dtype=np.float32)
