"""One layer's entry of the drift JSON: window scores against the stored statistics.

The window variance is the biased (population) variance of the decayed window, compared with
the stored running variance as ``service.stats.drift`` defines. Every score is null while the
window is empty; the baseline is read at the window's effective sample size
(``LayerWindow.effective_samples``). Values are plain Python floats, non-finite ones null, so
the body is valid JSON.
"""

import math
from typing import Any

import numpy as np

from service.backends.base import NormLayer
from service.drift.baseline import LayerBaseline
from service.drift.window import LayerWindow
from service.stats.drift import channel_drift, drift_score
from service.stats.moments import Vector

_SCORE_KEYS = ("drift", "mean_shift", "log_var_ratio", "worst_channel", "worst_channel_drift")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _floats(values: Vector) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in np.asarray(values, np.float64).tolist()]


def layer_report(
    layer: NormLayer,
    window: LayerWindow,
    baseline: LayerBaseline | None,
    per_channel: bool = True,
) -> dict[str, Any]:
    """The JSON entry of ``layer`` (which must have stored statistics)."""
    report: dict[str, Any] = {
        "name": layer.name,
        "kind": layer.kind,
        "channels": layer.channels,
        "eps": layer.eps,
        "window_samples": window.samples,
    }
    if window.is_empty or layer.running_mean is None or layer.running_var is None:
        report.update(dict.fromkeys(_SCORE_KEYS), baseline=None, drift_ratio=None)
        if per_channel:
            report["per_channel"] = None
        return report
    mean, var = window.moments.mean, window.moments.var_biased
    stored = (layer.running_mean, layer.running_var, layer.eps)
    score = drift_score(mean, var, *stored)
    report.update(
        drift=_finite(score.drift),
        mean_shift=_finite(score.mean_shift),
        log_var_ratio=_finite(score.log_var_ratio),
        worst_channel=score.worst_channel,
        worst_channel_drift=_finite(score.worst_channel_drift),
    )
    base = None if baseline is None else baseline.at(window.effective_samples)
    report["baseline"] = None if base is None else {k: _finite(v) for k, v in base.items()}
    ratio = None
    if base is not None and base["drift"] > 0.0 and report["drift"] is not None:
        ratio = _finite(report["drift"] / base["drift"])
    report["drift_ratio"] = ratio
    if per_channel:
        parts = channel_drift(mean, var, *stored)
        report["per_channel"] = {
            "mean": _floats(mean),
            "var": _floats(var),
            "mean_shift": _floats(parts.mean_shift),
            "log_var_ratio": _floats(parts.log_var_ratio),
            "w2": _floats(parts.w2),
        }
    return report
