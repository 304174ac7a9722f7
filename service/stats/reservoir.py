"""A bounded, uniform sample of a stream (reservoir sampling), kept as reference data.

Algorithm R with a fixed seed: after ``t`` samples, each has probability ``k/t`` of being held,
and the same stream in the same order always gives the same reservoir. Memory is
``capacity`` samples whatever the stream length.
"""

import numpy as np
import numpy.typing as npt

_SEED = 20_260_101


class Reservoir:
    def __init__(self, capacity: int, sample_shape: tuple[int, ...], dtype: npt.DTypeLike) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._buffer = np.empty((capacity, *sample_shape), dtype=dtype)
        self._seen = 0
        self._rng = np.random.default_rng(_SEED)

    def add(self, samples: npt.NDArray[np.generic]) -> None:
        capacity = len(self._buffer)
        start = self._seen
        self._seen += len(samples)
        fill = max(0, min(capacity - start, len(samples)))
        self._buffer[start : start + fill] = samples[:fill]
        rest = samples[fill:]
        if len(rest) == 0:
            return
        index = np.arange(start + fill, start + fill + len(rest))
        slots = self._rng.integers(0, index + 1)  # slot for sample t, uniform in [0, t]
        keep = slots < capacity
        # In stream order; numpy assigns repeated indices in order, so later samples win as in
        # the sequential algorithm.
        self._buffer[slots[keep]] = rest[keep]

    @property
    def samples(self) -> npt.NDArray[np.generic]:
        """The held samples (a copy), at most ``capacity``."""
        return self._buffer[: min(self._seen, len(self._buffer))].copy()
