"""Fixed-size binary samples back to back: ``application/octet-stream`` and npy data."""

import numpy as np
import numpy.typing as npt

from service.backends.base import Arrays
from service.config import TensorSpec
from service.datatypes import to_numpy
from service.errors import InvalidInput
from service.streams.base import (
    NO_LIMITS,
    Limits,
    describe_non_finite,
    empty_batch,
    first_non_finite,
)


class RecordParser:
    """Samples of one input, each ``sample_size`` values of dtype ``source``, back to back.

    ``start`` is the body offset of the first sample (the npy header's length), so every
    reported offset is a body offset. With ``expected`` (the npy header's count) the data
    must end exactly after that many samples. Values are converted to the input's datatype;
    a float value that is NaN or infinite (or overflows that datatype) fails the body.

    Each chunk is decoded with one ``np.frombuffer`` and one converting copy into the
    output batch; only the tail of a sample split across chunks is carried over.
    """

    def __init__(
        self,
        spec: TensorSpec,
        source: np.dtype[np.generic] | None = None,
        *,
        start: int = 0,
        expected: int | None = None,
        limits: Limits = NO_LIMITS,
    ) -> None:
        self._spec = spec
        self._target = to_numpy(spec.datatype)
        self._source = self._target if source is None else source
        self._record = self._source.itemsize * spec.sample_size
        self._start = start
        self._expected = expected
        self._limits = limits
        self._carry = bytearray()
        self.samples = 0
        self.bytes_read = start

    @property
    def buffered(self) -> int:
        return len(self._carry)

    def feed(self, chunk: bytes) -> Arrays:
        self._check_end(self.bytes_read + len(chunk))
        self._limits.check_bytes(self.bytes_read + len(chunk))
        self.bytes_read += len(chunk)
        count = (len(self._carry) + len(chunk)) // self._record
        first = self.samples
        self._limits.check_samples(first + count, self._locate)
        out = np.empty((count, *self._spec.shape), self._target)
        if count == 0:
            self._carry += chunk
            return {self._spec.name: out}
        view = memoryview(chunk)
        head = used = 0
        if self._carry:
            head, used = 1, self._record - len(self._carry)
            self._decode(out[:1], bytes(self._carry) + view[:used], first)
        end = used + (count - head) * self._record
        self._decode(out[head:], view[used:end], first + head)
        self._carry = bytearray(view[end:])
        self.samples += count
        return {self._spec.name: out}

    def close(self) -> Arrays:
        declared = "" if self._expected is None else f" (header: {self._expected} samples)"
        if self._carry:
            got, offset = len(self._carry), self.bytes_read - len(self._carry)
            raise InvalidInput(
                f"truncated sample {self.samples} at byte {offset}: {got} of {self._record} "
                f"bytes, {self._record - got} missing{declared}"
            )
        if self._expected is not None and self.samples < self._expected:
            raise InvalidInput(
                f"truncated data at byte {self.bytes_read}: the header declares "
                f"{self._expected} samples, the body holds {self.samples}"
            )
        return empty_batch((self._spec,))

    def _check_end(self, total: int) -> None:
        if self._expected is None:
            return
        end = self._start + self._expected * self._record
        if total > end:
            raise InvalidInput(
                f"unexpected data at byte {end}: the header declares {self._expected} "
                f"samples, which end there"
            )

    def _offset(self, sample: int) -> int:
        return self._start + sample * self._record

    def _locate(self, sample: int) -> str:
        return f"sample {sample} at byte {self._offset(sample)}"

    def _decode(self, out: npt.NDArray[np.generic], data: bytes | memoryview, first: int) -> None:
        """Convert ``data`` into ``out`` (samples ``first``...) and check every value."""
        sent = np.frombuffer(data, self._source).reshape(out.shape)
        # A float64 value beyond float32's range becomes inf: reported below, not warned.
        with np.errstate(over="ignore", invalid="ignore"):
            out[...] = sent
        if out.dtype.kind == "b" and (bad := np.flatnonzero(out.view(np.uint8) > 1)).size:
            sample, element = divmod(int(bad[0]), self._spec.sample_size)
            offset = self._offset(first + sample)
            raise InvalidInput(
                f"sample {first + sample} at byte {offset}: "
                f"byte {offset + element} is not a bool (0 or 1)"
            )
        if (found := first_non_finite(out)) is not None:
            sample, index = found
            flat = int(np.ravel_multi_index(index, self._spec.shape)) if index else 0
            offset = self._offset(first + sample)
            value, source = float(out[sample][index]), float(sent[sample][index])
            reason = describe_non_finite(value, source, self._spec.datatype, index)
            raise InvalidInput(
                f"sample {first + sample} at byte {offset}: {reason} "
                f"(byte {offset + flat * self._source.itemsize})"
            )
