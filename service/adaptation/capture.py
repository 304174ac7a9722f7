"""A uniform sample of the inputs a model version serves: the data an adaptation learns from.

Algorithm L (Li, "Reservoir-Sampling Algorithms of Time Complexity O(n(1 + log(N/n)))", ACM
TOMS 1994): once the reservoir is full, the gap to the next kept sample is drawn directly, so
a served batch that holds none costs one comparison, whatever its size. After ``t`` samples
each one is held with probability ``capacity / t``, as with Algorithm R, and the same stream
with the same seed gives the same reservoir. Rows of every input stay aligned.

Captured inputs stay in memory, are never logged, and leave it only as the reference data of a
version written from them. Thread-safe: ``offer`` runs on the event loop after every served
batch, ``samples`` and ``restart`` on the adaptation worker.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from service.backends.base import Arrays
from service.config import TensorSpec
from service.datatypes import to_numpy

_SEED = 20_261_129
_W_MAX = 1.0 - 2.0**-53  # W = 1 only when U = 1 exactly; log1p(-1) has no value


def capture_bytes(specs: Sequence[TensorSpec], capacity: int) -> int:
    """Memory a capture of ``capacity`` samples of ``specs`` holds."""
    per_sample = sum(to_numpy(spec.datatype).itemsize * math.prod(spec.shape) for spec in specs)
    return capacity * per_sample


class TrafficCapture:
    def __init__(self, specs: Sequence[TensorSpec], capacity: int, seed: int = _SEED) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._buffers = {
            spec.name: np.empty((capacity, *spec.shape), dtype=to_numpy(spec.datatype))
            for spec in specs
        }
        self._seed = seed
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        """Forget everything held (a new version serves, or the drift window was reset)."""
        with self._lock:
            self._rng = np.random.default_rng(self._seed)
            self.seen = 0
            self._w = 1.0
            self._shrink()
            self._next = self.capacity + self._gap()  # stream index of the next kept sample

    def _uniform(self) -> float:
        return 1.0 - float(self._rng.random())  # in (0, 1]: its log is finite

    def _shrink(self) -> None:
        self._w = min(self._w * math.exp(math.log(self._uniform()) / self.capacity), _W_MAX)

    def _gap(self) -> int:
        """Samples skipped before the next kept one: geometric with parameter ``W``."""
        return math.floor(math.log(self._uniform()) / math.log1p(-self._w))

    def offer(self, inputs: Arrays, batch_size: int, _seconds: float = 0.0) -> None:
        """Account a served batch; copy the rows the reservoir keeps. O(1) for a batch that
        holds no kept sample. A batcher ``Observer`` (the call's seconds are not used)."""
        with self._lock:
            start, self.seen = self.seen, self.seen + batch_size
            fill = max(0, min(self.capacity - start, batch_size))
            if fill:
                for name, buffer in self._buffers.items():
                    buffer[start : start + fill] = inputs[name][:fill]
            while self._next < self.seen:
                slot = int(self._rng.integers(self.capacity))
                row = self._next - start
                for name, buffer in self._buffers.items():
                    buffer[slot] = inputs[name][row]
                self._shrink()
                self._next += self._gap() + 1

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self._buffers.values())

    @property
    def held(self) -> int:
        return min(self.seen, self.capacity)

    def samples(self) -> Arrays:
        """A copy of the held samples, in reservoir order."""
        with self._lock:
            held = self.held
            return {name: buffer[:held].copy() for name, buffer in self._buffers.items()}
