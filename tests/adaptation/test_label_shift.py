"""The label-shift test against raw values: mixtures equal the pooled moments of the streams
they stand for, a class-subset stream is fully explained, a corrupted one is not."""

import numpy as np
import numpy.typing as npt
import pytest

from service.adaptation.label_shift import (
    all_explained,
    class_moments,
    frequencies,
    layer_shift,
    mixture,
)
from service.backends.taps import SampleMoments

CLASSES, CHANNELS, POSITIONS = 4, 3, 5


def _reference(seed: int = 0) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Raw layer inputs ``(N, C, P)`` whose distribution depends on the class, and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, 400)
    centres = rng.normal(0, 3, (CLASSES, CHANNELS, 1))
    scales = rng.uniform(0.5, 2.0, (CLASSES, CHANNELS, 1))
    raw = centres[labels] + scales[labels] * rng.normal(size=(len(labels), CHANNELS, POSITIONS))
    return raw, labels


def _sample_moments(raw: npt.NDArray[np.float64]) -> SampleMoments:
    mean = raw.mean(axis=2)
    return SampleMoments(POSITIONS, mean, ((raw - mean[..., None]) ** 2).sum(axis=2))


def _pooled(raw: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    """Mean and biased variance over samples and positions, straight from the values."""
    values = raw.transpose(1, 0, 2).reshape(CHANNELS, -1)
    return values.mean(axis=1), values.var(axis=1)


def _stored(raw: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    mean, var = _pooled(raw)
    return mean, var * raw.shape[0] * POSITIONS / (raw.shape[0] * POSITIONS - 1)


@pytest.mark.parametrize("repeats", [[1, 0, 0, 0], [0, 2, 0, 1], [1, 3, 2, 1]])
def test_the_mixture_is_the_stream_of_those_classes(repeats: list[int]) -> None:
    """A stream holding each class's reference samples ``repeats[k]`` times."""
    raw, labels = _reference()
    reference = class_moments(_sample_moments(raw), labels, CLASSES)
    picks = np.concatenate([np.tile(np.flatnonzero(labels == k), r) for k, r in enumerate(repeats)])
    weights = frequencies(labels[picks], CLASSES)
    mean, var = mixture(reference, weights)
    want_mean, want_var = _pooled(raw[picks])
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, want_var, rtol=1e-10)


def test_class_subset_traffic_is_explained_and_corrupted_traffic_is_not() -> None:
    raw, labels = _reference()
    reference = class_moments(_sample_moments(raw), labels, CLASSES)
    stored = _stored(raw)
    few = np.flatnonzero(labels <= 1)
    label_shift = layer_shift(
        "bn", _pooled(raw[few]), stored, reference, frequencies(labels[few], CLASSES), 1e-5, 0.5
    )
    assert label_shift.drift > 0.3  # the stored statistics see a shift ...
    assert label_shift.reweighted < 1e-6 and label_shift.explained  # ... the mixture none
    corrupted = raw * 0.5 + 1.0  # same predicted classes, other values
    covariate = layer_shift(
        "bn", _pooled(corrupted), stored, reference, frequencies(labels, CLASSES), 1e-5, 0.5
    )
    assert covariate.drift > 0.3
    assert covariate.reweighted > 0.5 * covariate.drift and not covariate.explained


def test_only_alarmed_layers_count_and_none_alarmed_is_no_label_shift() -> None:
    raw, labels = _reference()
    reference = class_moments(_sample_moments(raw), labels, CLASSES)
    weights, stored = frequencies(labels, CLASSES), _stored(raw)
    explained = layer_shift("a", _pooled(raw), stored, reference, weights, 1e-5, 1.0)
    unexplained = layer_shift("b", _pooled(raw * 2), stored, reference, weights, 1e-5, 0.5)
    assert all_explained([explained, unexplained], {"a": True, "b": False})
    assert not all_explained([explained, unexplained], {"a": True, "b": True})
    assert not all_explained([explained, unexplained], {})


def test_weight_on_a_class_the_reference_never_predicted_is_refused() -> None:
    raw, labels = _reference()
    reference = class_moments(_sample_moments(raw[labels < 3]), labels[labels < 3], CLASSES)
    with pytest.raises(ValueError, match=r"classes \[3\] never predicted"):
        mixture(reference, np.array([0.25, 0.25, 0.25, 0.25]))
    with pytest.raises(ValueError, match="summing to 1"):
        mixture(reference, np.array([0.5, 0.5, 0.5, 0.0]))
