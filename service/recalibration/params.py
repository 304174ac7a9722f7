"""The parameters of one recalibration, defaulted from ``config.toml`` and validated."""

import fnmatch
import math
from dataclasses import dataclass

from service.backends.base import NormLayer
from service.config import RecalibrationConfig
from service.errors import InvalidInput
from service.stats.recalibrate import MODES, Mode


@dataclass(frozen=True)
class RecalibrationParams:
    mode: Mode
    batch_size: int
    prior: float
    momentum: float | None
    layers: str | None
    """Comma-separated glob patterns (``bn1,layer2.*``) of the layers to recalibrate."""
    dry_run: bool
    activate: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "prior": self.prior,
            "momentum": self.momentum,
            "layers": self.layers,
            "dry_run": self.dry_run,
            "activate": self.activate,
        }


def make_params(
    defaults: RecalibrationConfig,
    *,
    mode: str | None = None,
    batch_size: int | None = None,
    prior: float | None = None,
    momentum: float | None = None,
    layers: str | None = None,
    dry_run: bool = False,
    activate: bool = True,
) -> RecalibrationParams:
    """Fill unset parameters from the model's ``[recalibration]`` section and check them all."""
    chosen = mode or defaults.mode
    if chosen not in MODES:
        raise InvalidInput(f"mode {chosen!r} is not one of {', '.join(MODES)}")
    size = defaults.batch_size if batch_size is None else batch_size
    if not 2 <= size <= 65_536:
        raise InvalidInput(f"batch_size {size} is out of range [2, 65536]")
    strength = (defaults.prior if chosen != "ema" else 0.0) if prior is None else prior
    if not (math.isfinite(strength) and strength >= 0):
        raise InvalidInput(f"prior {strength} must be a finite number >= 0")
    if chosen == "ema" and strength > 0:
        raise InvalidInput("prior does not apply to mode 'ema', which starts from the source")
    if chosen != "ema" and momentum is not None:
        raise InvalidInput(f"momentum applies only to mode 'ema', not {chosen!r}")
    rate = (defaults.momentum if momentum is None else momentum) if chosen == "ema" else None
    if rate is not None and not (math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise InvalidInput(f"momentum {rate} is out of range (0, 1]")
    return RecalibrationParams(chosen, size, strength, rate, layers or None, dry_run, activate)


def select_layers(layers: tuple[NormLayer, ...], patterns: str | None) -> tuple[NormLayer, ...]:
    """The layers with running statistics whose name matches one of ``patterns`` (all if None)."""
    candidates = tuple(layer for layer in layers if not layer.batch_independent)
    if not candidates:
        raise InvalidInput("the model has no layer with running statistics to recalibrate")
    if patterns is None:
        return candidates
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = tuple(
        layer for layer in candidates if any(fnmatch.fnmatchcase(layer.name, g) for g in globs)
    )
    if not chosen:
        names = ", ".join(layer.name for layer in candidates)
        raise InvalidInput(f"layers={patterns!r} matches no layer; the layers are: {names}")
    return chosen
