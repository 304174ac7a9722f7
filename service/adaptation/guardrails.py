"""Label-free figures that judge a candidate version, from model outputs and held-out drift.

Gates: the label-shift test (``label_shift``) and the holdout fit (``holdout_fits``). Reported
only: the mean prediction entropy and the predicted class distribution. Entropy is no gate: a
model broken by a shift can be confidently wrong, so entropy can rise while accuracy improves.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.stats.moments import Vector


def class_scores(output: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    """A model output as ``(samples, classes)`` scores; ``ValueError`` for another shape."""
    scores = np.asarray(output, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"class scores must be (samples, classes >= 2), got {scores.shape}")
    return scores


def probabilities(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Softmax over classes, or the scores themselves when every row already is a
    probability distribution (a model that ends in softmax)."""
    rows = scores.sum(axis=1, keepdims=True)
    if (scores >= 0).all() and np.allclose(rows, 1.0, atol=1e-4):
        normalized: npt.NDArray[np.float64] = scores / rows
        return normalized
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    softmax: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return softmax


def mean_entropy(scores: npt.NDArray[np.float64]) -> float:
    """Mean Shannon entropy of the predictions, in nats."""
    p = probabilities(scores)
    return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1).mean())


def predicted(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    labels: npt.NDArray[np.intp] = np.argmax(scores, axis=1)
    return labels


def distribution(scores: npt.NDArray[np.float64]) -> Vector:
    """The share of samples predicted as each class."""
    labels = predicted(scores)
    return np.bincount(labels, minlength=scores.shape[1]) / float(len(labels))


@dataclass(frozen=True)
class HoldoutFit:
    """The candidate's drift on held-out traffic, per layer, against its no-shift baseline."""

    ratios: Mapping[str, float]
    threshold: float

    @property
    def fits(self) -> bool:
        return all(ratio < self.threshold for ratio in self.ratios.values())


def holdout_fit(
    drift: Mapping[str, float], baseline: Mapping[str, float], threshold: float
) -> HoldoutFit:
    """``drift / baseline`` per layer; fits when every layer is below ``threshold``, the level
    that raised the alarm in the first place."""
    ratios = {layer: drift[layer] / baseline[layer] for layer in drift}
    return HoldoutFit(ratios, threshold)
