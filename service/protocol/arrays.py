"""Tensor data from JSON values or raw bytes to numpy, validated, and back to JSON values.

Shared by the V2 and V1 codecs. Every failure raises ``InvalidInput`` whose message starts
with ``where`` (for example ``input 'x'``), so the client knows which tensor is wrong.
"""

from typing import Final

import numpy as np
import numpy.typing as npt

from service.datatypes import to_numpy
from service.errors import InvalidInput
from service.protocol.jsonbody import json_type

# numpy dtype kinds that a JSON array may decode to for each target kind: JSON numbers
# decode to int64/uint64 ('i'/'u') or float64 ('f'), true/false to bool ('b'). Strings
# ('U') and mixtures with null or objects ('O') are never accepted, although numpy would
# happily parse "1.5" into a float.
_ACCEPTED_KINDS: Final[dict[str, str]] = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
_WANTED: Final[dict[str, str]] = {
    "f": "numbers",
    "i": "integers",
    "u": "integers",
    "b": "true/false",
}
_FOUND: Final[dict[str, str]] = {
    "f": "floats",
    "i": "integers",
    "u": "integers",
    "b": "true/false",
    "U": "strings",
    "O": "null, objects or mixed types",
}


def array_from_json(data: object, datatype: str, where: str) -> npt.NDArray[np.generic]:
    """A JSON array (flat or nested, rectangular) as an array of ``datatype``.

    The result keeps the nesting of ``data``; callers check its size and reshape. Integer
    inputs must be JSON integers within the datatype's range, BOOL inputs true/false, float
    inputs any JSON numbers that stay finite in the datatype (no NaN, no overflow).
    """
    if type(data) is not list:
        raise InvalidInput(f"{where}: 'data' must be a JSON array, got {json_type(data)}")
    try:
        # Decoding with numpy's own inference first (rather than ``dtype=target``) is what
        # lets strings, nulls and floats-for-integers be told apart from numbers.
        parsed = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(f"{where}: 'data' is ragged (nested arrays of unequal length)") from exc
    target = to_numpy(datatype)
    if parsed.dtype.kind == "f" and target.kind in "iu":
        exact = _exact_integers(data, target, datatype, where)
        if exact is not None:
            return exact
    if parsed.dtype.kind not in _ACCEPTED_KINDS[target.kind] and parsed.size:
        got = _FOUND.get(parsed.dtype.kind, parsed.dtype.kind)
        want = _WANTED[target.kind]
        raise InvalidInput(f"{where}: 'data' for {datatype} must hold {want}, got {got}")
    if target.kind in "iu" and parsed.size:
        _check_int_range(parsed, target, datatype, where)
    if target.kind == "f" and parsed.dtype != target:
        # Overflow turns into inf, which check_finite reports with a clear message.
        with np.errstate(over="ignore"):
            array = parsed.astype(target)
    else:
        array = parsed.astype(target, copy=False)
    check_finite(array, where)
    return array


def array_from_bytes(
    buffer: memoryview, datatype: str, count: int, where: str
) -> npt.NDArray[np.generic]:
    """``count`` little-endian elements of ``datatype`` in ``buffer`` (its exact length).

    Zero copy when the bytes are aligned for the dtype: the array is then a read-only view
    on the request body. Misaligned data (the JSON header length is arbitrary) is copied,
    since some runtimes read misaligned buffers slowly or not at all.
    """
    dtype = to_numpy(datatype)
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    if not array.flags.aligned:
        array = array.copy()
    if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidInput(f"{where}: BOOL binary data must be bytes 0 or 1")
    check_finite(array, where)
    return array


def check_finite(array: npt.NDArray[np.generic], where: str) -> None:
    """Reject NaN and infinities in float arrays (they would poison BatchNorm drift stats)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{where}: data holds NaN or infinite values")


def json_values(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """``array`` in a form ``orjson.OPT_SERIALIZE_NUMPY`` serializes: C-contiguous, native.

    float16 is widened to float32 (exact), because older orjson versions refuse float16;
    the shortest float32 repr of a float16 value parses back to the same float16.
    """
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return np.ascontiguousarray(array)


def _exact_integers(
    data: list[object], target: np.dtype[np.generic], datatype: str, where: str
) -> npt.NDArray[np.generic] | None:
    """JSON integers decoded exactly, or None if ``data`` holds floats.

    numpy promotes a list mixing negative integers and integers >= 2**63 to float64,
    losing precision; integer tensors (UINT64 in practice) are decoded via Python ints.
    """
    values = np.asarray(data, dtype=object)
    if not all(type(value) is int for value in values.flat):
        return None
    _check_int_range(values, target, datatype, where)
    return values.astype(target)


def _check_int_range(
    parsed: npt.NDArray[np.generic], target: np.dtype[np.generic], datatype: str, where: str
) -> None:
    info = np.iinfo(target.name)
    low, high = int(parsed.min()), int(parsed.max())
    if low < info.min or high > info.max:
        raise InvalidInput(
            f"{where}: value {low if low < info.min else high} is out of range for {datatype}"
        )
