"""The largest valid inference request body for a model, worked out from its config alone.

Knowing it lets a request be refused from its declared ``Content-Length``, before a byte of
the body is read, and a chunked body as soon as it grows past it. With ``B`` the model's
``max_batch_size`` and, per input ``i``, ``n_i = B * prod(shape_i)`` values of datatype ``T_i``:

- Binary tensors (``Inference-Header-Content-Length: H``): exactly
  ``H + sum_i n_i * itemsize(T_i)``, every input's raw bytes at the full batch; the header
  itself is JSON, so ``H`` is at most the JSON bound below.
- JSON ``data`` (V2): at most
  ``ENVELOPE_BYTES + sum_i (n_i * (VALUE_BYTES[T_i] + 2) + 4 * a_i)``: each value's longest
  text and a ``", "`` separator, and ``a_i`` arrays (the tensor written fully nested), each
  costing ``[``, ``]`` and ``", "``. A float value gets 24 bytes, the longest
  shortest-round-trip float64 text (``-2.2250738585072014e-308``), whatever the tensor's float
  type: JSON clients hold doubles (a float32 array's ``tolist()`` writes 17 digits). Integers
  get their widest decimal text, BOOL ``false``. Bodies that spell values longer (padded
  digits, indentation) can be refused; binary tensors have no such bound.
- V1 ``instances``: the same values, each instance written as an object
  ``{"input name": value}`` (the longer of the two accepted forms).

``ENVELOPE_BYTES`` is the allowance for everything but the values: ``id``, ``parameters``,
names, datatypes, shapes, the ``outputs`` list. ``VALUE_BYTES`` covers every datatype of
``service.datatypes``; a string type (BYTES) would have no such bound, and there is none.
"""

import json
import math
from dataclasses import dataclass
from typing import Final

from service.config import ModelConfig, TensorSpec
from service.datatypes import to_numpy

ENVELOPE_BYTES: Final = 64 * 1024
"""Allowance for a request's JSON besides the tensor values."""

SEPARATOR_BYTES: Final = len(", ")
ARRAY_BYTES: Final = len("[]") + SEPARATOR_BYTES
"""One (sub)array of a nested tensor: its brackets and the separator after it."""

_FLOAT_TEXT: Final = len("-2.2250738585072014e-308")
VALUE_BYTES: Final[dict[str, int]] = {
    "BOOL": len("false"),
    "UINT8": len("255"),
    "UINT16": len("65535"),
    "UINT32": len("4294967295"),
    "UINT64": len("18446744073709551615"),
    "INT8": len("-128"),
    "INT16": len("-32768"),
    "INT32": len("-2147483648"),
    "INT64": len("-9223372036854775808"),
    "FP16": _FLOAT_TEXT,
    "FP32": _FLOAT_TEXT,
    "FP64": _FLOAT_TEXT,
}
"""The longest JSON text of one value of each datatype, without its separator."""

THREAD_DECODE_BYTES = 256 * 1024
"""Request bodies (HTTP) and messages (gRPC) larger than this are decoded off the event loop."""


@dataclass(frozen=True)
class BodyBounds:
    """The largest valid request bodies for one model config, in bytes."""

    model: str
    json: int
    """A V2 request with every input as JSON ``data``; also bounds any JSON header."""
    binary: int
    """The raw bytes of every input at ``max_batch_size``: what follows a binary header."""
    v1: int
    """A V1 ``{"instances": [...]}`` request."""
    max_batch_size: int

    def v2(self, header_length: int | None) -> int:
        """The largest V2 body with this ``Inference-Header-Content-Length`` (None: JSON)."""
        if header_length is None:
            return self.json
        return header_length + self.binary

    def explain(self, header_length: int | None) -> str:
        """Where the bound of a V2 request comes from, for a 413 message."""
        if header_length is None:
            return (
                f"the largest valid JSON request for model '{self.model}' "
                f"(max_batch_size {self.max_batch_size})"
            )
        return (
            f"the largest valid request for model '{self.model}' with a JSON header of "
            f"{header_length} bytes: the header and {self.binary} bytes of binary tensors "
            f"(max_batch_size {self.max_batch_size})"
        )

    def explain_v1(self) -> str:
        return (
            f"the largest valid V1 request for model '{self.model}' "
            f"({self.max_batch_size} instances, max_batch_size)"
        )


def body_bounds(name: str, config: ModelConfig) -> BodyBounds:
    """The bounds of the module docstring for model ``name`` with ``config``."""
    batch = config.max_batch_size
    return BodyBounds(
        model=name,
        json=ENVELOPE_BYTES + sum(_json_tensor_bytes(spec, batch) for spec in config.inputs),
        binary=sum(batch * spec.sample_size * _itemsize(spec) for spec in config.inputs),
        v1=ENVELOPE_BYTES + ARRAY_BYTES + batch * _v1_instance_bytes(config.inputs),
        max_batch_size=batch,
    )


def _itemsize(spec: TensorSpec) -> int:
    return to_numpy(spec.datatype).itemsize


def _arrays(shape: tuple[int, ...]) -> int:
    """Arrays in a tensor of ``shape`` written fully nested: one per prefix index."""
    return sum(math.prod(shape[:depth]) for depth in range(len(shape)))


def _json_tensor_bytes(spec: TensorSpec, batch: int) -> int:
    values = batch * spec.sample_size
    value = VALUE_BYTES[spec.datatype] + SEPARATOR_BYTES
    return values * value + _arrays((batch, *spec.shape)) * ARRAY_BYTES


def _v1_instance_bytes(inputs: tuple[TensorSpec, ...]) -> int:
    """One instance as ``{"name": value, ...}``, separator included."""
    size = len("{}") + SEPARATOR_BYTES
    for spec in inputs:
        key = len(json.dumps(spec.name)) + len(": ") + SEPARATOR_BYTES  # escaped, as json does
        value = VALUE_BYTES[spec.datatype] + SEPARATOR_BYTES
        size += key + spec.sample_size * value + _arrays(spec.shape) * ARRAY_BYTES
    return size
