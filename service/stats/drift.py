"""Per-layer drift scores between observed input moments and stored running statistics.

For channel ``c`` with stored ``(mu, s2)`` and observed ``(m, v)``::

    d   = (m - mu) / sqrt(s2 + eps)           standardized mean shift
    rho = (v + eps) / (s2 + eps)              variance ratio
    w   = sqrt(d**2 + (sqrt(rho) - 1)**2)     W2 distance of the two Gaussians / stored std

Per layer: ``drift`` = RMS of ``w`` over channels (the headline), ``mean_shift`` = RMS of
``d``, ``log_var_ratio`` = RMS of ``log(rho)``, and the channel with the largest ``w``.
"""

from dataclasses import dataclass

import numpy as np

from service.stats.moments import Vector


@dataclass(frozen=True)
class DriftScore:
    drift: float
    mean_shift: float
    log_var_ratio: float
    worst_channel: int
    worst_channel_drift: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "drift": self.drift,
            "mean_shift": self.mean_shift,
            "log_var_ratio": self.log_var_ratio,
            "worst_channel": self.worst_channel,
            "worst_channel_drift": self.worst_channel_drift,
        }


@dataclass(frozen=True)
class ChannelDrift:
    """Per-channel components, float64: ``d``, ``log(rho)`` and ``w`` as above."""

    mean_shift: Vector
    log_var_ratio: Vector
    w2: Vector


def channel_drift(mean: Vector, var: Vector, mu: Vector, s2: Vector, eps: float) -> ChannelDrift:
    stored = np.asarray(s2, dtype=np.float64) + eps
    d = (np.asarray(mean, dtype=np.float64) - mu) / np.sqrt(stored)
    rho = (np.maximum(np.asarray(var, dtype=np.float64), 0.0) + eps) / stored
    return ChannelDrift(d, np.log(rho), np.sqrt(d**2 + (np.sqrt(rho) - 1.0) ** 2))


def _rms(x: Vector) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def drift_score(mean: Vector, var: Vector, mu: Vector, s2: Vector, eps: float) -> DriftScore:
    """Scores of observed ``(mean, var)`` against stored ``(mu, s2)`` (see module docstring)."""
    channels = channel_drift(mean, var, mu, s2, eps)
    worst = int(np.argmax(channels.w2))
    return DriftScore(
        drift=_rms(channels.w2),
        mean_shift=_rms(channels.mean_shift),
        log_var_ratio=_rms(channels.log_var_ratio),
        worst_channel=worst,
        worst_channel_drift=float(channels.w2[worst]),
    )
