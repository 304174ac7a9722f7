"""The figures an adaptation decides on, computed off the event loop from model files and data.

Every function here is synchronous and may take seconds (forwards over the captured traffic
and the reference data); the loop runs them on its worker thread.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.adaptation.guardrails import class_scores, distribution, mean_entropy, predicted
from service.adaptation.label_shift import (
    ClassMoments,
    LayerShift,
    class_moments,
    frequencies,
    layer_shift,
)
from service.backends.base import Arrays, Backend, NormLayer
from service.backends.families import family
from service.backends.taps import SampleMoments
from service.config import ModelConfig
from service.drift.baseline import compute_baseline
from service.drift.factory import load_reference
from service.stats.drift import drift_score


def rows(arrays: Arrays, index: npt.NDArray[np.intp] | slice) -> Arrays:
    return {name: array[index] for name, array in arrays.items()}


def count(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))


def chunks(arrays: Arrays, size: int) -> Iterator[Arrays]:
    for start in range(0, count(arrays), size):
        yield rows(arrays, slice(start, start + size))


def scores(backend: Backend, inputs: Arrays, output: str, chunk: int) -> npt.NDArray[np.float64]:
    """The class scores ``backend`` gives ``inputs``, run in chunks of ``chunk`` samples."""
    parts = [backend.predict(part)[output] for part in chunks(inputs, chunk)]
    return class_scores(np.concatenate(parts))


def tapped(path: Path, config: ModelConfig, inputs: Arrays) -> dict[str, SampleMoments]:
    """Per-sample input moments of every running-statistics layer of the file at ``path``."""
    taps = family(config.backend).taps(path, [spec.name for spec in config.inputs])
    parts = [taps.sample_moments(part) for part in chunks(inputs, config.max_batch_size)]
    return {layer: SampleMoments.concatenate([p[layer] for p in parts]) for layer in taps.layers}


def tracked(layers: tuple[NormLayer, ...]) -> dict[str, NormLayer]:
    return {layer.name: layer for layer in layers if not layer.batch_independent}


@dataclass(frozen=True)
class ReferenceClasses:
    """A version's reference moments per predicted class, for the label-shift test."""

    classes: int
    layers: Mapping[str, ClassMoments]


def reference_classes(
    version_dir: Path, config: ModelConfig, backend: Backend, output: str
) -> ReferenceClasses | None:
    """Group the version's ``reference.npy`` by the class it predicts for each sample; None
    without reference data."""
    reference, _ = load_reference(config, version_dir)
    if reference is None or count(reference) == 0:
        return None
    labels = predicted(scores(backend, reference, output, config.max_batch_size))
    classes = next(spec for spec in config.outputs if spec.name == output).shape[0]
    moments = tapped(version_dir / config.model_file, config, reference)
    return ReferenceClasses(
        classes, {name: class_moments(m, labels, classes) for name, m in moments.items()}
    )


@dataclass(frozen=True)
class TrafficFigures:
    """The captured traffic through the serving version."""

    samples: int
    class_distribution: list[float]
    mean_entropy: float
    label_shift: tuple[LayerShift, ...]


def traffic_figures(
    traffic: Arrays,
    version_dir: Path,
    config: ModelConfig,
    backend: Backend,
    output: str,
    reference: ReferenceClasses,
    share: float,
) -> TrafficFigures:
    """Score the traffic's pooled moments against the stored statistics and against the
    reference's classes mixed by the frequencies the serving version predicts on it."""
    traffic_scores = scores(backend, traffic, output, config.max_batch_size)
    weights = frequencies(predicted(traffic_scores), reference.classes)
    moments = tapped(version_dir / config.model_file, config, traffic)
    stored = tracked(backend.layers)
    shifts = []
    for name, layer_moments in moments.items():
        pooled, layer = layer_moments.pooled(), stored[name]
        assert layer.running_mean is not None and layer.running_var is not None
        shifts.append(
            layer_shift(
                name,
                (pooled.mean, pooled.var_biased),
                (layer.running_mean, layer.running_var),
                reference.layers[name],
                weights,
                layer.eps,
                share,
            )
        )
    return TrafficFigures(
        count(traffic),
        distribution(traffic_scores).tolist(),
        mean_entropy(traffic_scores),
        tuple(shifts),
    )


@dataclass(frozen=True)
class CandidateFigures:
    """A candidate version on held-out traffic: per layer its drift over its own no-shift
    baseline, and what it predicts."""

    drift_ratio: Mapping[str, float]
    class_distribution: list[float] | None
    mean_entropy: float | None


def candidate_figures(
    candidate_dir: Path,
    config: ModelConfig,
    fit: Arrays,
    holdout: Arrays,
    output: str | None,
) -> CandidateFigures:
    """Drift of ``holdout`` against the candidate's statistics, over the baseline bootstrapped
    from ``fit`` (the candidate's own reference) at the holdout's size."""
    path = candidate_dir / config.model_file
    runtime = family(config.backend)
    layers = runtime.read_layers(path)
    taps = runtime.taps(path, [spec.name for spec in config.inputs])
    baselines = compute_baseline(taps.sample_moments, layers, fit, config.max_batch_size)
    moments = tapped(path, config, holdout)
    stored = tracked(layers)
    ratios = {}
    for name, layer_moments in moments.items():
        pooled, layer = layer_moments.pooled(), stored[name]
        assert layer.running_mean is not None and layer.running_var is not None
        drift = drift_score(
            pooled.mean, pooled.var_biased, layer.running_mean, layer.running_var, layer.eps
        ).drift
        ratios[name] = drift / baselines[name].at(count(holdout))["drift"]
    if output is None:
        return CandidateFigures(ratios, None, None)
    backend = runtime.load(path, config)
    candidate_scores = scores(backend, holdout, output, config.max_batch_size)
    return CandidateFigures(
        ratios, distribution(candidate_scores).tolist(), mean_entropy(candidate_scores)
    )
