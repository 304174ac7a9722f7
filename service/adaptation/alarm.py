"""When drift says the statistics are stale: the alarm that starts an adaptation.

A layer alarms when its drift window holds at least ``min_samples`` samples, its drift is at
least ``min_drift`` and, when the version has a no-shift baseline, the drift is at least
``threshold`` times it. Without a baseline ``min_drift`` decides alone: there is no level to
compare with, and inventing one would make the alarm fire on window noise.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from service.config import AdaptationConfig
from service.registry import LoadedModel


@dataclass(frozen=True)
class LayerDrift:
    """What the drift window says of one layer: its drift, the baseline at the window's size
    (``None`` without reference data) and the window's sample count."""

    layer: str
    drift: float | None
    baseline: float | None
    samples: float

    @property
    def ratio(self) -> float | None:
        if self.drift is None or not self.baseline:
            return None
        return self.drift / self.baseline


@dataclass(frozen=True)
class AlarmRule:
    threshold: float
    min_drift: float
    min_samples: int

    def alarmed(self, layer: LayerDrift) -> bool:
        if layer.drift is None or layer.samples < self.min_samples:
            return False
        if layer.drift < self.min_drift:
            return False
        ratio = layer.ratio
        return ratio is None or ratio >= self.threshold

    def alarms(self, layers: Iterable[LayerDrift]) -> Mapping[str, bool]:
        return {layer.layer: self.alarmed(layer) for layer in layers}


def rule_of(config: AdaptationConfig) -> AlarmRule:
    return AlarmRule(config.threshold, config.min_drift, config.min_samples)


def layer_drift(model: LoadedModel) -> list[LayerDrift] | None:
    """The serving window per layer; None while there is no monitor or its baseline, which
    the version has reference data for, is still being computed."""
    if model.drift is None:
        return None
    snapshot = model.drift.snapshot(per_channel=False)
    result = []
    for layer in snapshot["layers"]:
        baseline = layer["baseline"]
        if snapshot["baseline"] is not None and baseline is None and layer["drift"] is not None:
            return None  # baseline pending: the ratio is not known yet
        level = None if baseline is None else baseline.get("drift")
        result.append(LayerDrift(layer["name"], layer["drift"], level, layer["window_samples"]))
    return result
