"""The drift report of a served version: its layers' window scores against the stored statistics.

The window variance is the biased (population) variance of the decayed window, compared with
the stored running variance as ``service.stats.drift`` defines. Every score is null while the
window is empty; the baseline is read at the window's effective sample size
(``LayerWindow.effective_samples``). Values are plain Python floats, non-finite ones null, so
the body is valid JSON. The dicts below are the JSON objects themselves, in the order their
keys are written.
"""

import math
from typing import NotRequired, TypedDict

import numpy as np

from service.backends.base import NormLayer
from service.drift.baseline import LayerBaseline
from service.drift.window import LayerWindow
from service.stats.drift import DriftScore, channel_drift, drift_score
from service.stats.moments import Vector


class ChannelDetail(TypedDict):
    """Per channel: the window's moments and the score's components (``stats.drift``)."""

    mean: list[float | None]
    var: list[float | None]
    mean_shift: list[float | None]
    log_var_ratio: list[float | None]
    w2: list[float | None]


class LayerDrift(TypedDict):
    name: str
    kind: str
    channels: int
    eps: float
    window_samples: float
    drift: float | None
    mean_shift: float | None
    log_var_ratio: float | None
    worst_channel: int | None
    worst_channel_drift: float | None
    baseline: dict[str, float | None] | None
    """The no-shift scores at this window's size, by score name."""
    drift_ratio: float | None
    per_channel: NotRequired[ChannelDetail | None]
    """Only when asked for (the JSON route, not the status page or the metrics)."""


class DriftSnapshot(TypedDict):
    half_life: float
    max_overhead: float
    batches_seen: int
    batches_tapped: int
    samples_seen: int
    samples_tapped: int
    baseline: str | None
    """Where the baseline comes from (``reference.npy (2048 samples)``); None without one."""
    errors: int
    last_error: str | None
    last_error_at: str | None
    layers: list[LayerDrift]


class VersionDrift(DriftSnapshot):
    """The snapshot of a served version, as ``GET /v2/models/{m}/drift`` returns it (``name``
    and ``version`` first)."""

    name: str
    version: str


def named_snapshot(name: str, version: int, snapshot: DriftSnapshot) -> VersionDrift:
    return {"name": name, "version": str(version), **snapshot}


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _floats(values: Vector) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


def _ratio(drift: float | None, baseline: dict[str, float] | None) -> float | None:
    if drift is None or baseline is None or not baseline["drift"] > 0.0:
        return None
    return _finite(drift / baseline["drift"])


def layer_report(
    layer: NormLayer,
    window: LayerWindow,
    baseline: LayerBaseline | None,
    per_channel: bool = True,
) -> LayerDrift:
    """The entry of ``layer`` (which must have stored statistics)."""
    score: DriftScore | None = None
    base: dict[str, float] | None = None
    detail: ChannelDetail | None = None
    if not window.is_empty and layer.running_mean is not None and layer.running_var is not None:
        mean, var = window.moments.mean, window.moments.var_biased
        stored = (layer.running_mean, layer.running_var, layer.eps)
        score = drift_score(mean, var, *stored)
        base = None if baseline is None else baseline.at(window.effective_samples)
        if per_channel:
            parts = channel_drift(mean, var, *stored)
            detail = {
                "mean": _floats(mean),
                "var": _floats(var),
                "mean_shift": _floats(parts.mean_shift),
                "log_var_ratio": _floats(parts.log_var_ratio),
                "w2": _floats(parts.w2),
            }
    drift = None if score is None else _finite(score.drift)
    report: LayerDrift = {
        "name": layer.name,
        "kind": layer.kind,
        "channels": layer.channels,
        "eps": layer.eps,
        "window_samples": window.samples,
        "drift": drift,
        "mean_shift": None if score is None else _finite(score.mean_shift),
        "log_var_ratio": None if score is None else _finite(score.log_var_ratio),
        "worst_channel": None if score is None else score.worst_channel,
        "worst_channel_drift": None if score is None else _finite(score.worst_channel_drift),
        "baseline": None if base is None else {k: _finite(v) for k, v in base.items()},
        "drift_ratio": _ratio(drift, base),
    }
    if per_channel:
        report["per_channel"] = detail
    return report
