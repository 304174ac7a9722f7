"""The parameters of one recalibration: defined once, read from the query string, defaulted from
``config.toml`` and recorded in the report."""

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from service.backends.base import NormLayer
from service.config import GhostBatchSize, Momentum, Prior, RecalibrationConfig
from service.errors import InvalidInput
from service.stats.recalibrate import MODES, RecalibrationMode


@dataclass(frozen=True)
class RecalibrationParams:
    """The query parameters of the recalibrate routes: FastAPI reads them into this class (a
    class dependency), checks each against its type and range, and describes each in the
    OpenAPI document. ``mode``, ``batch_size``, ``prior`` and ``momentum`` are the keys of the
    model's ``config.toml`` ``[recalibration]`` section; unset (None), they take its values
    (``settings``). The report records the parameters in effect (``applied``).

    ``mode`` is a plain string so that an unknown one gets this service's own message.
    """

    mode: Annotated[str | None, Field(description="cumulative, population or ema")] = None
    batch_size: GhostBatchSize | None = None
    prior: Prior | None = None
    momentum: Momentum | None = None
    layers: Annotated[str | None, Field(description="comma-separated name globs")] = None
    """Comma-separated glob patterns (``bn1,layer2.*``) of the layers to recalibrate."""
    dry_run: bool = False
    activate: bool = True

    def settings(self, defaults: RecalibrationConfig) -> RecalibrationConfig:
        """The ``[recalibration]`` settings of this run: ``defaults`` overridden by the
        parameters given. ``InvalidInput`` for a combination that does not apply."""
        mode = _mode(self.mode or defaults.mode)
        prior = self.prior
        if prior is None:  # mode ema starts from the stored statistics: they are its prior
            prior = 0.0 if mode == "ema" else defaults.prior
        if not math.isfinite(prior):
            raise InvalidInput(f"prior {prior} must be a finite number >= 0")
        if mode == "ema" and prior > 0:
            raise InvalidInput("prior does not apply to mode 'ema', which starts from the source")
        if mode != "ema" and self.momentum is not None:
            raise InvalidInput(f"momentum applies only to mode 'ema', not {mode!r}")
        return RecalibrationConfig(
            mode=mode,
            batch_size=defaults.batch_size if self.batch_size is None else self.batch_size,
            prior=prior,
            momentum=defaults.momentum if self.momentum is None else self.momentum,
        )

    def applied(self, settings: RecalibrationConfig) -> "RecalibrationParams":
        """These parameters as run with ``settings``, as the report records them."""
        return dataclasses.replace(
            self,
            mode=settings.mode,
            batch_size=settings.batch_size,
            prior=settings.prior,
            momentum=ema_momentum(settings),
            layers=self.layers or None,
        )


def ema_momentum(settings: RecalibrationConfig) -> float | None:
    """``settings.momentum`` where it applies (mode ema), else None."""
    return settings.momentum if settings.mode == "ema" else None


def _mode(name: str) -> RecalibrationMode:
    for mode in MODES:
        if name == mode:
            return mode
    raise InvalidInput(f"mode {name!r} is not one of {', '.join(MODES)}")


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
