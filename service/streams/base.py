"""What every stream parser shares: the push-parser protocol, limits, value checks."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.backends.base import Arrays
from service.config import TensorSpec
from service.datatypes import to_numpy
from service.errors import PayloadTooLarge


class SampleParser(Protocol):
    """A synchronous push parser for one recalibration body.

    Feed it the body's chunks in order, of any sizes (empty ones included), then call
    ``close()`` once at the end of the body. Each call returns the samples completed by
    that call as a batch: input name -> array ``(N, *shape)`` in the input's datatype
    (little-endian, C-contiguous, writable), ``N`` possibly 0. Concatenating the batches
    gives the same arrays for any chunking of the same body.

    Memory is one chunk plus ``buffered`` bytes of carry-over (less than one sample for
    binary formats, less than one line for ndjson), independent of the body's length.

    Every problem raises ``InvalidInput`` (``PayloadTooLarge`` for a limit) naming what is
    wrong and where: byte offset, sample index or line number. After an exception the
    parser is spent; the request fails as a whole.
    """

    @property
    def samples(self) -> int:
        """Samples returned so far."""
        ...

    @property
    def bytes_read(self) -> int:
        """Body bytes fed so far."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held back until the rest of their sample or line arrives."""
        ...

    def feed(self, chunk: bytes) -> Arrays: ...

    def close(self) -> Arrays: ...


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one body; ``None`` means unbounded."""

    max_samples: int | None = None
    max_bytes: int | None = None

    def check_bytes(self, total: int) -> None:
        if self.max_bytes is not None and total > self.max_bytes:
            raise PayloadTooLarge(f"body is larger than the limit of {self.max_bytes} bytes")

    def check_samples(self, total: int, locate: Callable[[int], str]) -> None:
        """Raise if ``total`` samples is over the limit; ``locate(i)`` says where sample i is."""
        if self.max_samples is not None and total > self.max_samples:
            where = locate(self.max_samples)
            raise PayloadTooLarge(f"{where}: more than the limit of {self.max_samples} samples")


NO_LIMITS = Limits()


def empty_batch(inputs: tuple[TensorSpec, ...]) -> Arrays:
    return {spec.name: np.empty((0, *spec.shape), to_numpy(spec.datatype)) for spec in inputs}


def first_non_finite(batch: npt.NDArray[np.generic]) -> tuple[int, tuple[int, ...]] | None:
    """``(sample, index within the sample)`` of the first NaN or infinity, else ``None``.

    Vectorised over a C-contiguous batch; non-float batches are always finite.
    """
    if batch.dtype.kind != "f" or batch.size == 0:
        return None
    finite = np.isfinite(batch.reshape(len(batch), -1))
    if finite.all():
        return None
    sample, element = divmod(int(np.argmin(finite)), finite.shape[1])
    return sample, tuple(int(i) for i in np.unravel_index(element, batch.shape[1:]))


def describe_non_finite(value: float, source: float, datatype: str, index: tuple[int, ...]) -> str:
    """Why the converted value at ``index`` in its sample is not finite; ``source`` as sent."""
    where = f"value {list(index)}" if index else "value"
    if math.isnan(value):
        return f"{where} is NaN"
    if math.isfinite(source):
        return f"{where} ({source!r}) overflows {datatype}"
    return f"{where} is infinite"
