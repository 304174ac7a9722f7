"""The alarm rule and the label-free guardrail figures, against hand-computed values."""

import math

import numpy as np
import pytest

from service.adaptation.alarm import AlarmRule, LayerDrift
from service.adaptation.guardrails import (
    class_scores,
    distribution,
    holdout_fit,
    mean_entropy,
    probabilities,
)

RULE = AlarmRule(threshold=3.0, min_drift=0.25, min_samples=512)


@pytest.mark.parametrize(
    ("layer", "alarmed"),
    [
        (LayerDrift("bn", 0.9, 0.3, 512), True),  # 3x baseline, over min_drift
        (LayerDrift("bn", 0.89, 0.3, 512), False),  # under 3x
        (LayerDrift("bn", 0.2, 0.01, 512), False),  # 20x, under min_drift
        (LayerDrift("bn", 0.9, 0.3, 511), False),  # too few samples
        (LayerDrift("bn", 0.25, None, 600), True),  # no baseline: min_drift alone
        (LayerDrift("bn", 0.24, None, 600), False),
        (LayerDrift("bn", None, None, 0), False),  # empty window
    ],
)
def test_alarm_rule(layer: LayerDrift, alarmed: bool) -> None:
    assert RULE.alarmed(layer) is alarmed
    assert RULE.alarms([layer]) == {"bn": alarmed}


def test_entropy_and_distribution_by_hand() -> None:
    logits = class_scores(np.array([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 5.0]]))
    rows = [[0.5, 0.5], [0.75, 0.25], [1 / (1 + math.exp(5)), 1 / (1 + math.exp(-5))]]
    np.testing.assert_allclose(probabilities(logits), rows, rtol=1e-12)
    by_hand = [-sum(p * math.log(p) for p in row) for row in rows]
    assert mean_entropy(logits) == pytest.approx(sum(by_hand) / 3, rel=1e-12)
    np.testing.assert_array_equal(distribution(logits), [2 / 3, 1 / 3])  # a tie is class 0
    softmax_out = np.array([[0.2, 0.8], [1.0, 0.0]])  # already probabilities: taken as they are
    np.testing.assert_array_equal(probabilities(softmax_out), softmax_out)
    assert mean_entropy(softmax_out) == pytest.approx(
        -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)) / 2
    )
    with pytest.raises(ValueError, match="classes >= 2"):
        class_scores(np.zeros((4, 1)))


def test_holdout_fit_needs_every_layer_under_the_threshold() -> None:
    fit = holdout_fit({"a": 0.2, "b": 0.5}, {"a": 0.1, "b": 0.2}, threshold=3.0)
    assert fit.ratios == {"a": 2.0, "b": 2.5} and fit.fits
    assert not holdout_fit({"a": 0.31}, {"a": 0.1}, threshold=3.0).fits
