"""Open Inference Protocol tensor datatypes and their numpy equivalents."""

from typing import Final

import numpy as np

DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}

DATATYPE_NAMES: Final[dict[np.dtype[np.generic], str]] = {v: k for k, v in DTYPES.items()}


def to_numpy(datatype: str) -> np.dtype[np.generic]:
    """The little-endian numpy dtype of a V2 datatype name; ``KeyError`` if unsupported."""
    return DTYPES[datatype].newbyteorder("<")


def to_datatype(dtype: np.dtype[np.generic]) -> str:
    return DATATYPE_NAMES[np.dtype(dtype).newbyteorder("=")]
