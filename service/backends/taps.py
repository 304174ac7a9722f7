"""What eval-mode taps return: the per-sample moments of each normalization layer's input.

Drift compares the statistics a layer stores with those of the inputs it sees in serving.
A tapped forward runs the whole model in eval mode (stored statistics used everywhere,
dropout off: exactly the serving computation) and returns, for every layer with running
statistics, the moments of that layer's *input*, per sample and channel, so that callers can
pool any set of samples (a window, a bootstrap draw) exactly (``base.TappedForward``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.stats.moments import Moments

Matrix = npt.NDArray[np.float64]
SampleIndex = slice | Sequence[int] | npt.NDArray[np.integer] | npt.NDArray[np.bool_]


def _frozen(values: npt.ArrayLike) -> Matrix:
    array = np.array(values, dtype=np.float64)  # a private copy
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class SampleMoments:
    """Per-sample, per-channel moments of one layer's input for a batch of N samples.

    For an input of shape ``(N, C, *spatial)``, ``positions = prod(spatial)`` (1 for an
    ``(N, C)`` input) values per sample and channel; ``mean[i, c]`` is their mean and
    ``m2[i, c]`` the sum of their squared deviations from ``mean[i, c]``. Float64, read-only.
    """

    positions: int
    mean: Matrix
    m2: Matrix

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _frozen(self.mean))
        object.__setattr__(self, "m2", _frozen(self.m2))
        if self.mean.ndim != 2 or self.mean.shape != self.m2.shape:
            raise ValueError(f"mean {self.mean.shape} and m2 {self.m2.shape} must be equal (N, C)")
        if self.positions < 1:
            raise ValueError(f"positions must be >= 1, got {self.positions}")

    @property
    def samples(self) -> int:
        return int(self.mean.shape[0])

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def pooled(self) -> Moments:
        """The moments of all ``N * positions`` values per channel (Chan's merge of the
        samples)::

            n = N * positions;  mean = avg_i mean_i;
            M2 = sum_i m2_i + positions * sum_i (mean_i - mean)**2
        """
        if self.samples == 0:
            return Moments.empty(self.channels)
        mean = self.mean.mean(axis=0)
        spread = np.square(self.mean - mean).sum(axis=0)
        return Moments(
            self.samples * self.positions, mean, self.m2.sum(axis=0) + self.positions * spread
        )

    def subset(self, index: SampleIndex) -> SampleMoments:
        """The samples selected by ``index`` along the batch axis (a slice, integer positions
        with repeats allowed, as a bootstrap draws them, or a boolean mask)."""
        return SampleMoments(self.positions, self.mean[index], self.m2[index])

    @classmethod
    def concatenate(cls, parts: Sequence[SampleMoments]) -> SampleMoments:
        """The samples of ``parts`` in order, e.g. a reference set tapped in batches.
        Raises ``ValueError`` for no parts, or parts with different positions or channels."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({(part.positions, part.channels) for part in parts}) != 1:
            raise ValueError("parts differ in positions or channels")
        mean = np.concatenate([part.mean for part in parts])
        m2 = np.concatenate([part.m2 for part in parts])
        return cls(parts[0].positions, mean, m2)
