"""An exponentially decayed window of one layer's input moments over tapped traffic.

Every sample carries the weight ``w = 0.5 ** (a / half_life)`` where ``a`` is the number of
samples tapped *after* its batch (the samples of one batch share a weight). Adding a batch of
``b`` samples with pooled moments ``B``::

    f = 0.5 ** (b / half_life);  moments = moments.decayed(f).merge(B)
    samples = samples * f + b;   squared = squared * f**2 + b

so ``moments`` are the weighted moments of every position of every tapped sample (float64,
Chan merge), ``samples = sum(w)`` is the reported window size and ``squared = sum(w**2)``.
The effective sample size ``sum(w)**2 / sum(w**2)`` is the ``n`` whose unweighted mean has the
variance of the weighted one: in steady state it is ``~2.9 * half_life`` while ``samples`` is
``~1.44 * half_life``; it is the size at which the no-shift baseline is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.stats.moments import Moments


@dataclass(frozen=True)
class LayerWindow:
    """Immutable; ``add`` returns a new window, so readers can copy a reference under a lock."""

    moments: Moments
    samples: float
    squared: float

    @classmethod
    def empty(cls, channels: int) -> LayerWindow:
        return cls(Moments.empty(channels), 0.0, 0.0)

    def add(self, batch: Moments, batch_samples: int, half_life: float) -> LayerWindow:
        """The window after one more tapped batch of ``batch_samples`` samples."""
        factor = 0.5 ** (batch_samples / half_life)
        return LayerWindow(
            self.moments.decayed(factor).merge(batch),
            self.samples * factor + batch_samples,
            self.squared * factor * factor + batch_samples,
        )

    @property
    def is_empty(self) -> bool:
        return self.moments.n == 0.0

    @property
    def effective_samples(self) -> float:
        """``sum(w)**2 / sum(w**2)``; 0 for an empty window."""
        return self.samples * self.samples / self.squared if self.squared > 0.0 else 0.0
