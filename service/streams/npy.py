"""``application/x-npy``: a ``.npy`` file streamed, header first, then raw samples.

The header (magic ``\\x93NUMPY``, version, little-endian header length, a Python-literal
dict) is collected incrementally, then parsed by numpy's own ``read_array_header_*``
(``ast.literal_eval`` + ``descr_to_dtype``); the data is handed to a ``RecordParser``.
"""

import io
import tokenize

import numpy as np
from numpy.lib import format as npy_format

from service.backends.base import Arrays
from service.config import TensorSpec
from service.datatypes import to_numpy
from service.errors import InvalidInput, PayloadTooLarge
from service.streams.base import NO_LIMITS, Limits, empty_batch
from service.streams.records import RecordParser

# Bytes of the header-length field per version; 3.0 is 2.0 with a UTF-8 header, which
# only matters for structured field names, refused anyway.
_LENGTH_FIELD = {(1, 0): 2, (2, 0): 4, (3, 0): 4}
# numpy's own default: the header goes through ast.literal_eval.
MAX_HEADER_BYTES = 10_000


def accepts(source: np.dtype[np.generic], target: np.dtype[np.generic]) -> bool:
    """Whether npy data of dtype ``source`` may feed an input of dtype ``target``.

    Same kind only, either byte order: any float width for a float input (a value beyond
    the input's range fails as non-finite); an integer dtype that converts without loss
    for an integer input; bool for bool. Integers for a float input are refused: raw
    pixels sent to a model that expects normalised floats would give wrong statistics.
    """
    if source.fields is not None or source.subdtype is not None:
        return False
    if source.kind == "f" or target.kind == "f":
        return source.kind == target.kind
    if source.kind == "b" or target.kind == "b":
        return source.kind == target.kind
    return source.kind in "iu" and np.can_cast(source, target, "safe")


class NpyParser:
    """See ``SampleParser``; the array must be ``(n, *input_shape)``, C order."""

    def __init__(self, spec: TensorSpec, limits: Limits = NO_LIMITS) -> None:
        self._spec = spec
        self._limits = limits
        self._header = bytearray()
        self._data: RecordParser | None = None

    @property
    def samples(self) -> int:
        return 0 if self._data is None else self._data.samples

    @property
    def bytes_read(self) -> int:
        return len(self._header) if self._data is None else self._data.bytes_read

    @property
    def buffered(self) -> int:
        return len(self._header) if self._data is None else self._data.buffered

    def feed(self, chunk: bytes) -> Arrays:
        view = memoryview(chunk)
        while self._data is None:
            missing = self._header_length() - len(self._header)
            if missing == 0:
                self._data = self._start_data()
            elif not view:
                return empty_batch((self._spec,))
            else:
                self._limits.check_bytes(len(self._header) + min(missing, len(view)))
                self._header += view[:missing]
                view = view[missing:]
        return self._data.feed(bytes(view) if len(view) < len(chunk) else chunk)

    def close(self) -> Arrays:
        if self._data is None:  # feed() starts the data as soon as the header is complete
            needed = self._header_length()  # also reports a bad prefix as such
            raise InvalidInput(
                f"truncated .npy header at byte {len(self._header)}: "
                f"{len(self._header)} of at least {needed} bytes"
            )
        return self._data.close()

    @property
    def _target(self) -> np.dtype[np.generic]:
        return to_numpy(self._spec.datatype)

    def _header_length(self) -> int:
        """Header bytes needed, as far as the bytes so far tell; checks those bytes."""
        head = bytes(self._header[: npy_format.MAGIC_LEN + 4])
        prefix = npy_format.MAGIC_PREFIX
        if not prefix.startswith(head[: len(prefix)]):
            raise InvalidInput(
                f"not a .npy body: it starts {head[: len(prefix)]!r}, not {prefix!r}"
            )
        if len(head) < npy_format.MAGIC_LEN:
            return npy_format.MAGIC_LEN
        version = (head[6], head[7])
        if version not in _LENGTH_FIELD:
            raise InvalidInput(f"unsupported .npy version {version[0]}.{version[1]} at byte 6")
        start = npy_format.MAGIC_LEN + _LENGTH_FIELD[version]
        if len(head) < start:
            return start
        length = int.from_bytes(head[npy_format.MAGIC_LEN : start], "little")
        if length > MAX_HEADER_BYTES:
            raise InvalidInput(f".npy header of {length} bytes is over {MAX_HEADER_BYTES}")
        return start + length

    def _start_data(self) -> RecordParser:
        """Parse the complete header and check it against the input."""
        version = (self._header[6], self._header[7])
        read = (
            npy_format.read_array_header_1_0
            if version == (1, 0)
            else npy_format.read_array_header_2_0
        )
        try:
            shape, fortran_order, dtype = read(
                io.BytesIO(self._header[npy_format.MAGIC_LEN :]), MAX_HEADER_BYTES
            )
        except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as exc:
            raise InvalidInput(f"invalid .npy header: {exc}") from exc
        n = self._check_header(tuple(shape), fortran_order, dtype)
        sample_bytes = dtype.itemsize * self._spec.sample_size
        if self._limits.max_samples is not None and n > self._limits.max_samples:
            raise PayloadTooLarge(
                f".npy header declares {n} samples, over the limit of {self._limits.max_samples}"
            )
        self._limits.check_bytes(len(self._header) + n * sample_bytes)
        return RecordParser(
            self._spec, dtype, start=len(self._header), expected=n, limits=self._limits
        )

    def _check_header(
        self, shape: tuple[int, ...], fortran_order: bool, dtype: np.dtype[np.generic]
    ) -> int:
        """The number of samples the header declares."""
        expected = ("n", *self._spec.shape)
        if len(shape) != len(expected) or shape[1:] != self._spec.shape or shape[0] < 0:
            wanted = str(expected).replace("'", "")
            raise InvalidInput(
                f".npy shape {shape} does not match input '{self._spec.name}': expected {wanted}"
            )
        if fortran_order:
            raise InvalidInput(".npy data is in Fortran order; save a C-ordered array")
        if not accepts(dtype, self._target):
            raise InvalidInput(
                f".npy dtype {dtype.str} cannot feed input '{self._spec.name}' of datatype "
                f"{self._spec.datatype}"
            )
        return shape[0]
