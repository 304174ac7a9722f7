"""``application/x-ndjson``: one JSON value per line, each line parsed with orjson."""

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

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

MAX_LINE_BYTES = 64 * 1024 * 1024
_KINDS = {"f": ("iuf", "numbers"), "i": ("iu", "integers"), "u": ("iu", "integers")}
_GOT = {
    "b": "booleans",
    "f": "fractional numbers",
    "U": "strings",
    "O": "nulls, objects or mixed types",
}


class _Bad(Exception):
    """What is wrong with one value; the caller adds where."""


def to_batch(value: Any, spec: TensorSpec, rows: int | None = None) -> npt.NDArray[np.generic]:
    """A JSON value as ``(k, *shape)`` in the input's datatype: a sample, or k >= 1 of them.

    With ``rows``, ``value`` must be a list of exactly ``rows`` samples. Booleans mixed
    with numbers count as 0/1 (numpy's conversion); JSON has no NaN, but a value beyond the
    datatype's range (1e39 for FP32) fails.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise _Bad("not a regular nested array (rows of different lengths?)") from None
    if rows is None and array.shape == spec.shape:
        array = array[np.newaxis]
    count = len(array) if array.ndim else 0
    if not count or array.shape != (count if rows is None else rows, *spec.shape):
        raise _Bad(f"expected shape {list(spec.shape)}, got {list(array.shape)}")
    target = to_numpy(spec.datatype)
    kinds, wanted = _KINDS.get(target.kind, ("b", "booleans"))
    if array.dtype.kind not in kinds:
        raise _Bad(
            f"expected {wanted} for {spec.datatype}, got {_GOT.get(array.dtype.kind, 'numbers')}"
        )
    if target.kind in "iu":
        info = np.iinfo(cast("np.dtype[np.integer[Any]]", target))
        if (bad := np.flatnonzero((array < info.min) | (array > info.max))).size:
            value = array.reshape(-1)[bad[0]]
            raise _Bad(f"value {value} is out of range for {spec.datatype}")
    with np.errstate(over="ignore"):
        batch = array.astype(target)
    if (found := first_non_finite(batch)) is not None:
        sample, index = found
        value, source = float(batch[sample][index]), float(array[sample][index])
        position = f"sample {sample} of the line: " if len(batch) > 1 else ""
        raise _Bad(position + describe_non_finite(value, source, spec.datatype, index))
    return batch


class NdjsonParser:
    """See ``SampleParser``. A line holds one sample of every input.

    For a single-input model a line is the sample itself (a nested array of the input's
    shape) or ``{"name": sample}``; for a multi-input model it is an object with exactly
    the input names. A value may also be a batch ``(k, *shape)``, the same ``k`` for every
    input of the line. Lines end with ``\\n`` (``\\r\\n`` and a missing final newline are
    fine); blank lines are skipped but counted, so line numbers are an editor's.

    Chunks of well-formed single-sample lines are converted in one ``np.asarray`` per
    input; a chunk that fails that is redone line by line to report the first bad line.
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        limits: Limits = NO_LIMITS,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._inputs = tuple(inputs)
        self._names = {spec.name for spec in self._inputs}
        self._limits = limits
        self._max_line = max_line_bytes
        self._pending = bytearray()
        self._line = 1  # the number of the line that starts in _pending
        self.samples = 0
        self.bytes_read = 0

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, chunk: bytes) -> Arrays:
        self._limits.check_bytes(self.bytes_read + len(chunk))
        self.bytes_read += len(chunk)
        end = chunk.rfind(b"\n")
        if end < 0:
            self._pending += chunk
            self._check_length(len(self._pending), self._line)
            return empty_batch(self._inputs)
        lines = (bytes(self._pending) + chunk[:end]).split(b"\n")
        self._pending = bytearray(chunk[end + 1 :])
        first, self._line = self._line, self._line + len(lines)
        self._check_length(len(self._pending), self._line)
        return self._parse(lines, first)

    def close(self) -> Arrays:
        lines, self._pending = [bytes(self._pending)], bytearray()
        return self._parse(lines, self._line)

    def _check_length(self, length: int, number: int) -> None:
        if length > self._max_line:
            raise InvalidInput(f"line {number}: longer than the limit of {self._max_line} bytes")

    def _parse(self, lines: list[bytes], first: int) -> Arrays:
        values: list[Any] = []
        numbers: list[int] = []
        for number, line in enumerate(lines, first):
            self._check_length(len(line), number)
            if not line.strip():
                continue
            try:
                values.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                # An earlier line's bad value is the first problem, whatever the chunking.
                for value, earlier in zip(values, numbers, strict=True):
                    self._line_batch(value, earlier)
                raise InvalidInput(
                    f"line {number}: invalid JSON at column {exc.colno}: {exc.msg}"
                ) from None
            numbers.append(number)
        if not values:
            return empty_batch(self._inputs)
        batch = self._stack(values)
        if batch is not None:
            self._count([1] * len(values), numbers)
            return batch
        batches = [
            self._line_batch(value, number) for value, number in zip(values, numbers, strict=True)
        ]
        self._count([len(next(iter(b.values()))) for b in batches], numbers)
        return {spec.name: np.concatenate([b[spec.name] for b in batches]) for spec in self._inputs}

    def _count(self, counts: list[int], numbers: list[int]) -> None:
        ends = np.cumsum(counts)

        def locate(sample: int) -> str:
            line = numbers[int(np.searchsorted(ends, sample - self.samples, side="right"))]
            return f"line {line}"

        self._limits.check_samples(self.samples + int(ends[-1]), locate)
        self.samples += int(ends[-1])

    def _stack(self, values: list[Any]) -> Arrays | None:
        """The fast path: every line one valid sample; ``None`` if not."""
        if len(self._inputs) == 1 and not any(isinstance(v, dict) for v in values):
            columns = {self._inputs[0].name: values}
        elif all(isinstance(v, dict) and v.keys() == self._names for v in values):
            columns = {name: [v[name] for v in values] for name in self._names}
        else:
            return None
        try:
            return {
                spec.name: to_batch(columns[spec.name], spec, len(values)) for spec in self._inputs
            }
        except _Bad:
            return None

    def _line_batch(self, value: Any, number: int) -> Arrays:
        """One line as a batch per input; raises naming the line and the input."""
        if isinstance(value, dict):
            if unknown := [key for key in value if key not in self._names]:
                known = ", ".join(repr(name) for name in sorted(self._names))
                raise InvalidInput(f"line {number}: unknown input {unknown[0]!r}; inputs: {known}")
            if missing := [spec.name for spec in self._inputs if spec.name not in value]:
                raise InvalidInput(f"line {number}: missing input {missing[0]!r}")
            items, label = value, True
        elif len(self._inputs) == 1:
            items, label = {self._inputs[0].name: value}, False
        else:
            known = ", ".join(repr(name) for name in sorted(self._names))
            raise InvalidInput(f"line {number}: expected an object with the inputs {known}")
        batch: Arrays = {}
        for spec in self._inputs:
            where = f"line {number}: input {spec.name!r}" if label else f"line {number}"
            try:
                batch[spec.name] = to_batch(items[spec.name], spec)
            except _Bad as exc:
                raise InvalidInput(f"{where}: {exc}") from None
        if len({len(array) for array in batch.values()}) > 1:
            sizes = ", ".join(f"{name} {len(array)}" for name, array in batch.items())
            raise InvalidInput(f"line {number}: inputs with different sample counts: {sizes}")
        return batch
