"""Framing of the binary tensor data extension: a JSON header, then raw tensor bytes.

A body with binary tensors is ``header || tensor_1 || tensor_2 || ...``; the
``Inference-Header-Content-Length`` HTTP header gives the header's length in bytes, and
each binary tensor's ``parameters.binary_data_size`` its length, in the order the tensors
appear in the header's ``inputs`` (requests) or ``outputs`` (responses). Without the HTTP
header the whole body is JSON.
"""

from collections.abc import Iterable

from service.errors import InvalidInput


def split_body(body: bytes, header_length: int | None) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary section after it, as views on ``body`` (no copy)."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    if header_length < 0:
        raise InvalidInput(f"Inference-Header-Content-Length {header_length} is negative")
    if header_length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length} is larger than the body "
            f"({len(body)} bytes)"
        )
    return view[:header_length], view[header_length:]


class BinarySections:
    """Hands out consecutive slices of a binary section, after checking the sizes add up."""

    def __init__(self, data: memoryview, sizes: Iterable[int], header_given: bool) -> None:
        declared = sum(sizes)
        if declared != len(data):
            hint = "" if header_given else " (Inference-Header-Content-Length header missing?)"
            raise InvalidInput(
                f"binary data after the JSON header is {len(data)} bytes but the inputs' "
                f"binary_data_size add up to {declared}{hint}"
            )
        self._data = data
        self._offset = 0

    def take(self, size: int) -> memoryview:
        """The next ``size`` bytes; sizes were checked in the constructor."""
        start = self._offset
        self._offset += size
        return self._data[start : self._offset]


def join_body(header: bytes, sections: list[memoryview]) -> tuple[bytes, int | None]:
    """``header`` followed by ``sections``, and the header length (None without sections)."""
    if not sections:
        return header, None
    return b"".join([header, *sections]), len(header)
