"""Incremental parsers for recalibration bodies, chosen by ``Content-Type``.

``make_parser(content_type, inputs)`` returns a ``SampleParser``: push the body's chunks
in as they arrive, get the completed samples back as batches, ``close()`` at the end.
"""

from collections.abc import Sequence

from service.config import TensorSpec
from service.errors import InvalidInput, UnsupportedMediaType
from service.streams.base import Limits, SampleParser
from service.streams.ndjson import MAX_LINE_BYTES, NdjsonParser
from service.streams.npy import NpyParser
from service.streams.records import RecordParser

__all__ = [
    "MAX_LINE_BYTES",
    "MEDIA_TYPES",
    "Limits",
    "NdjsonParser",
    "NpyParser",
    "RecordParser",
    "SampleParser",
    "UnsupportedMediaType",
    "make_parser",
]

NPY = "application/x-npy"
RAW = "application/octet-stream"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = (NPY, RAW, NDJSON)


def make_parser(
    content_type: str,
    inputs: Sequence[TensorSpec],
    max_samples: int | None = None,
    max_bytes: int | None = None,
) -> SampleParser:
    """The parser for a body of ``content_type`` (parameters such as ``charset`` ignored).

    ``npy`` and raw bodies need a single-input model; ``UnsupportedMediaType`` for any
    other type, ``InvalidInput`` for a binary type with a multi-input model.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    limits = Limits(max_samples, max_bytes)
    if media == NDJSON:
        return NdjsonParser(inputs, limits)
    if media not in (NPY, RAW):
        raise UnsupportedMediaType(
            f"unsupported Content-Type {content_type!r}; use one of {', '.join(MEDIA_TYPES)}"
        )
    if len(inputs) != 1:
        names = ", ".join(repr(spec.name) for spec in inputs)
        raise InvalidInput(
            f"{media} needs a single-input model, this one has {names}; use {NDJSON}"
        )
    if media == NPY:
        return NpyParser(inputs[0], limits)
    return RecordParser(inputs[0], limits=limits)
