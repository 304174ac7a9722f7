"""Is a layer's drift explained by a change of class frequencies? (label shift vs covariate shift)

Traffic drawn from a few classes moves BatchNorm statistics as surely as a corruption does,
but recalibrating on it normalizes away the signal that tells the classes apart. The test is
black-box shift estimation (Lipton, Wang & Smola, "Detecting and Correcting for Label Shift
with Black Box Predictors", ICML 2018) applied to a layer's input moments:

1. For the reference data, group each layer's per-sample input moments by the class the
   serving version predicts, and pool each group (``class_moments``): per class ``k``, the
   sample count ``n_k``, the mean ``m_k`` and the biased variance ``v_k`` per channel.
2. Mix the groups with the class frequencies ``pi`` the serving version predicts on the
   traffic (``mixture``)::

       mean = sum_k pi_k m_k;     var = sum_k pi_k (v_k + m_k**2) - mean**2

   which are exactly the moments of a stream holding the reference's class-``k`` samples in
   proportions ``pi`` (every sample has the same number of positions).
3. Score the traffic's moments against the mixture instead of against the stored running
   statistics (``stats.drift.drift_score``). A label shift is explained by the frequencies:
   the reweighted drift falls to the no-shift level. A covariate shift is not: it stays.

``explained`` decides per layer: the reweighting removes at least ``1 - share`` of the drift
(``reweighted <= share * drift``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.backends.taps import SampleMoments
from service.stats.drift import drift_score
from service.stats.moments import Vector

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ClassMoments:
    """One layer's reference input moments per predicted class: ``counts[k]`` samples with
    per-channel ``mean[k]`` and biased ``var[k]`` over their samples and positions. A class
    never predicted on the reference has count 0 (and zero moments)."""

    counts: Vector
    mean: Matrix
    var: Matrix

    @property
    def classes(self) -> int:
        return int(self.counts.shape[0])


def class_moments(
    moments: SampleMoments, predicted: npt.NDArray[np.integer], classes: int
) -> ClassMoments:
    """Pool the per-sample ``moments`` of the reference by ``predicted`` class (``0 <= k <
    classes``, one label per sample)."""
    if predicted.shape != (moments.samples,):
        raise ValueError(f"{predicted.shape} labels for {moments.samples} samples")
    counts = np.zeros(classes)
    mean = np.zeros((classes, moments.channels))
    var = np.zeros((classes, moments.channels))
    for k in range(classes):
        members = predicted == k
        if not members.any():
            continue
        pooled = moments.subset(members).pooled()
        counts[k], mean[k], var[k] = members.sum(), pooled.mean, pooled.var_biased
    return ClassMoments(counts, mean, var)


def frequencies(predicted: npt.NDArray[np.integer], classes: int) -> Vector:
    """The share of each class among ``predicted`` labels."""
    if predicted.size == 0:
        raise ValueError("no predictions")
    return np.bincount(predicted, minlength=classes)[:classes] / float(predicted.size)


def mixture(reference: ClassMoments, weights: Vector) -> tuple[Vector, Vector]:
    """Per-channel ``(mean, biased var)`` of the reference's classes mixed in proportions
    ``weights`` (see the module docstring). Weight on a class the reference never predicted
    cannot be explained by it: ``ValueError``."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (reference.classes,) or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"weights must be {reference.classes} shares summing to 1")
    missing = (weights > 0) & (reference.counts == 0)
    if missing.any():
        raise ValueError(
            f"classes {np.flatnonzero(missing).tolist()} never predicted on the reference"
        )
    mean = weights @ reference.mean
    second = weights @ (reference.var + reference.mean**2)
    return mean, np.maximum(second - mean**2, 0.0)


@dataclass(frozen=True)
class LayerShift:
    """One layer of traffic: its drift against the stored statistics and against the class
    mixture, and whether the class frequencies explain it."""

    layer: str
    drift: float
    reweighted: float
    explained: bool


def layer_shift(
    layer: str,
    traffic: tuple[Vector, Vector],
    stored: tuple[Vector, Vector],
    reference: ClassMoments,
    weights: Vector,
    eps: float,
    share: float,
) -> LayerShift:
    """Score ``traffic`` ``(mean, biased var)`` against the ``stored`` running statistics and
    against the reference mixture with ``weights``; explained when ``reweighted <= share *
    drift``."""
    mean, var = traffic
    drift = drift_score(mean, var, stored[0], stored[1], eps).drift
    mix_mean, mix_var = mixture(reference, weights)
    reweighted = drift_score(mean, var, mix_mean, mix_var, eps).drift
    return LayerShift(layer, drift, reweighted, reweighted <= share * drift)


def all_explained(shifts: Sequence[LayerShift], alarmed: Mapping[str, bool]) -> bool:
    """Whether every alarmed layer's drift is explained by class frequencies (a label shift).
    With no alarmed layer there is nothing to explain: ``False``."""
    considered = [shift for shift in shifts if alarmed.get(shift.layer, False)]
    return bool(considered) and all(shift.explained for shift in considered)
