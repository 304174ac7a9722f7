"""Per-channel streaming moments (count, mean, M2) in float64 with an exact merge.

State per channel: ``n`` values, their ``mean`` and ``m2 = sum((x - mean)**2)``. Two states
merge exactly (Chan, Golub & LeVeque 1979)::

    n = nA + nB;  d = mB - mA;  mean = mA + d * nB / n;  M2 = M2A + M2B + d**2 * nA * nB / n

so any partition of the data, merged in any grouping, gives the moments of the whole up to
float64 rounding, in O(channels) memory. A sum of squares is never accumulated: the relative
error of E[x^2] - E[x]^2 grows as (mean/std)**2 times the unit roundoff (Chan, Golub &
LeVeque, "Algorithms for computing the sample variance", The American Statistician 1983), so
with mean/std = 1e4 a float32 one (roundoff 6e-8) loses every digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]
LayerStatistics = tuple[Vector, Vector]
"""One normalization layer's ``(running_mean, running_var)``, ``running_var`` being the
unbiased variance (torch's convention, which bnserve also writes into ONNX ``input_var``)."""


def _frozen(values: npt.ArrayLike) -> Vector:
    array = np.array(values, dtype=np.float64)  # always a private copy
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Moments:
    """Per-channel moments of a set of values; immutable (its arrays are read-only).

    ``n`` is the count of values per channel: for BatchNorm inputs every sample *and* every
    spatial position counts (``batch * H * W``), as in torch's Bessel correction. It is a float
    so that a window can be decayed (``decayed``); weights then play the role of counts.
    """

    n: float
    mean: Vector
    m2: Vector

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", float(self.n))
        object.__setattr__(self, "mean", _frozen(self.mean))
        object.__setattr__(self, "m2", _frozen(self.m2))
        if self.mean.ndim != 1 or self.mean.shape != self.m2.shape:
            raise ValueError(f"mean {self.mean.shape} and m2 {self.m2.shape} must be equal 1-D")
        if not self.n >= 0.0:
            raise ValueError(f"count must be >= 0, got {self.n}")

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def empty(cls, channels: int) -> Moments:
        """No values yet: the identity of ``merge``."""
        return cls(0.0, np.zeros(channels), np.zeros(channels))

    @classmethod
    def from_summary(cls, n: float, mean: npt.ArrayLike, var_biased: npt.ArrayLike) -> Moments:
        """Moments from a count and the per-channel mean and *biased* variance (M2 / n),
        as a model graph computes them (e.g. ONNX training-mode BatchNormalization)."""
        return cls(n, np.asarray(mean, np.float64), np.asarray(var_biased, np.float64) * float(n))

    @classmethod
    def from_batch(cls, x: npt.NDArray[np.generic], axis_channel: int = 1) -> Moments:
        """Per-channel moments of ``x`` over every axis but ``axis_channel``.

        Float16/float32 input is reduced in float32, *centred*: with a float64 pre-mean ``s``
        (rounded to float32), ``d = x - s`` is exact for values near the mean, and
        ``mean = s + sum(d)/n``, ``M2 = sum(d**2) - sum(d)**2 / n`` (sums accumulated in
        float64) corrects for ``s`` not being the exact mean. Other dtypes use float64.
        Non-finite values give non-finite moments (callers check).
        """
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError("a batch needs a channel axis")
        axis = axis_channel % x.ndim
        channels = x.shape[axis]
        count = x.size // channels if channels else 0
        if count == 0:
            return cls.empty(channels)
        work = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
        xw = x.astype(work, copy=False)
        axes = tuple(i for i in range(x.ndim) if i != axis)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite in, non-finite out
            shift = xw.mean(axis=axes, dtype=np.float64, keepdims=True).astype(work)
            centred = xw - shift  # a fresh array: squared in place below
            s1 = centred.sum(axis=axes, dtype=np.float64)
            s2 = np.square(centred, out=centred).sum(axis=axes, dtype=np.float64)
        mean = shift.reshape(channels).astype(np.float64) + s1 / count
        m2 = np.maximum(s2 - s1 * s1 / count, 0.0)
        return cls(count, mean, m2)

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of values together (Chan et al.); a new object."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {self.channels} channels with {other.channels}")
        if other.n == 0.0:
            return self
        if self.n == 0.0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        return Moments(n, mean, m2)

    def decayed(self, factor: float) -> Moments:
        """The same values with every weight multiplied by ``factor`` (0 <= factor): the mean
        stays, ``n`` and ``m2`` scale. Merging new values into a decayed state gives the
        weighted moments of an exponentially decayed window."""
        if not factor >= 0.0:
            raise ValueError(f"decay factor must be >= 0, got {factor}")
        return Moments(self.n * factor, self.mean, self.m2 * factor)

    @property
    def var_biased(self) -> Vector:
        """``M2 / n`` (population variance); NaN where there are no values."""
        return self._divided(self.n)

    @property
    def var_unbiased(self) -> Vector:
        """``M2 / (n - 1)`` (Bessel-corrected, what torch stores); NaN when ``n <= 1``."""
        return self._divided(self.n - 1.0)

    def _divided(self, denominator: float) -> Vector:
        if denominator <= 0.0:
            return np.full(self.channels, np.nan)
        return self.m2 / denominator
