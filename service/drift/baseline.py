"""The no-shift baseline: the score that reference data itself gets at a given window size.

A score of a finite window is never zero, even without any shift: the window's moments are
estimates, whose standard errors fall as ``1/sqrt(n)`` for ``n`` independent samples. Spatial
correlation makes the effective count far smaller than ``n * H * W``, so the level is
bootstrapped over *samples*, not derived analytically.

Bootstrap: with the per-sample moments ``(m_i, M2_i)`` (``P`` positions each) of the ``N``
reference samples, a window of ``n`` samples drawn with replacement is a count vector
``c ~ Multinomial(n, 1/N)``; its pooled moments, merged exactly as ``SampleMoments.pooled``
does for the drawn samples, are (with ``d_i = m_i - centre``, any fixed ``centre``)::

    mean = centre + sum(c_i d_i) / n
    M2   = sum(c_i (M2_i + P d_i**2)) - P n (mean - centre)**2,   var = M2 / (n P)

so one draw costs ``O(N * channels)`` whatever ``n``. For ``n = 1, 2, 4, ..., 2**16`` the
baseline is the mean of ``drift_score`` over ``DRAWS`` draws (fixed seed, the same draws for
every layer, as one window holds the same samples in every layer). ``LayerBaseline.at`` reads
it in log-log between grid points, clamps below ``n = 1`` and extends with slope ``-1/2``
above the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.backends.base import Arrays, NormLayer
from service.backends.taps import SampleMoments
from service.stats.drift import channel_drift
from service.stats.moments import Vector

SCORES = ("drift", "mean_shift", "log_var_ratio")
SIZES = tuple(2**k for k in range(17))
DRAWS = 32
SEED = 0
_TINY = np.finfo(np.float64).tiny  # log of an exact-zero score stays finite


SampleFn = Callable[[Arrays], Mapping[str, SampleMoments]]  # a tapped forward


@dataclass(frozen=True)
class LayerBaseline:
    """Mean bootstrap scores (``SCORES``) of one layer on the window sizes ``sizes``."""

    sizes: Vector
    scores: Mapping[str, Vector]

    def at(self, samples: float) -> dict[str, float]:
        """The baseline scores of a window of ``samples`` samples (log-log interpolation)."""
        log_sizes = np.log(self.sizes)
        x = math.log(max(samples, float(self.sizes[0])))
        result = {}
        for name, values in self.scores.items():
            log_values = np.log(np.maximum(values, _TINY))
            if x > log_sizes[-1]:
                y = float(log_values[-1]) - 0.5 * (x - float(log_sizes[-1]))
            else:
                y = float(np.interp(x, log_sizes, log_values))
            result[name] = math.exp(y)
        return result


@dataclass(frozen=True)
class ReferenceSamples:
    """One layer's reference samples in the bootstrap's stacked form ``(N, 2C)``."""

    layer: NormLayer
    positions: int
    centre: Vector
    stacked: npt.NDArray[np.float64]  # [d_i | M2_i + P d_i**2]

    @classmethod
    def build(cls, layer: NormLayer, samples: SampleMoments) -> ReferenceSamples:
        centre = samples.mean.mean(axis=0)
        d = samples.mean - centre
        stacked = np.concatenate([d, samples.m2 + samples.positions * d * d], axis=1)
        return cls(layer, samples.positions, centre, stacked)

    def scores(self, counts: npt.NDArray[np.float64], n: int) -> dict[str, float]:
        """Mean scores over the draws ``counts`` (``(draws, N)``, each row summing to ``n``)."""
        assert self.layer.running_mean is not None and self.layer.running_var is not None
        channels = self.layer.channels
        sums = counts @ self.stacked
        shift = sums[:, :channels] / n
        m2 = np.maximum(sums[:, channels:] - self.positions * n * shift * shift, 0.0)
        parts = channel_drift(
            self.centre + shift,
            m2 / (n * self.positions),
            self.layer.running_mean,
            self.layer.running_var,
            self.layer.eps,
        )
        per_draw = {
            "drift": parts.w2,
            "mean_shift": parts.mean_shift,
            "log_var_ratio": parts.log_var_ratio,
        }
        return {k: float(np.sqrt(np.mean(v * v, axis=1)).mean()) for k, v in per_draw.items()}


def reference_size(reference: Arrays) -> int:
    """Samples in ``reference`` (every input has them on its first axis)."""
    sizes = {int(array.shape[0]) for array in reference.values()}
    if len(sizes) != 1:
        raise ValueError(f"reference inputs disagree on the sample count: {sorted(sizes)}")
    return sizes.pop()


def _per_sample(
    sample: SampleFn, layers: tuple[NormLayer, ...], reference: Arrays, chunk: int
) -> dict[str, SampleMoments]:
    """The per-sample moments of every layer over the whole reference, tapped in chunks."""
    parts: dict[str, list[SampleMoments]] = {layer.name: [] for layer in layers}
    for start in range(0, reference_size(reference), chunk):
        batch = {name: array[start : start + chunk] for name, array in reference.items()}
        for name, moments in sample(batch).items():
            if name in parts:
                parts[name].append(moments)
    return {name: SampleMoments.concatenate(got) for name, got in parts.items() if got}


def compute_baseline(
    sample: SampleFn,
    layers: tuple[NormLayer, ...],
    reference: Arrays,
    chunk: int,
    draws: int = DRAWS,
    seed: int = SEED,
) -> dict[str, LayerBaseline]:
    """Bootstrap baselines of ``layers`` (those with stored statistics) from ``reference``,
    run through ``sample`` (a tapped forward) in chunks of ``chunk`` samples. Layers the
    tapped forward does not report get no baseline."""
    tracked = tuple(layer for layer in layers if not layer.batch_independent)
    per_sample = _per_sample(sample, tracked, reference, chunk)
    refs = [
        ReferenceSamples.build(lay, per_sample[lay.name])
        for lay in tracked
        if lay.name in per_sample
    ]
    del per_sample  # the stacked form replaces it: peak memory ~2 copies, not 3
    total = reference_size(reference)
    if not refs or total == 0:
        return {}
    rng = np.random.default_rng(seed)
    table: dict[str, dict[str, list[float]]] = {r.layer.name: {k: [] for k in SCORES} for r in refs}
    for n in SIZES:
        counts = rng.multinomial(n, np.full(total, 1.0 / total), size=draws).astype(np.float64)
        for ref in refs:
            for key, value in ref.scores(counts, n).items():
                table[ref.layer.name][key].append(value)
    sizes = np.array(SIZES, dtype=np.float64)
    return {
        name: LayerBaseline(sizes, {k: np.array(v) for k, v in scores.items()})
        for name, scores in table.items()
    }
