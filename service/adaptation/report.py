"""A model's adaptation as ``GET /v2/models/{m}/adaptation`` and the status page show it."""

from typing import TypedDict

from service.adaptation.decisions import Decision, ModelAdaptation, Watch
from service.config import AdaptationConfig
from service.registry import LoadedModel


class CaptureFill(TypedDict):
    capacity: int
    held: int
    seen: int


class AdaptationReport(TypedDict):
    settings: AdaptationConfig
    capture: CaptureFill | None
    """None when the model captures nothing (``capture = 0``)."""
    alarmed: bool
    deciding: bool
    watching: Watch | None
    decisions: list[Decision]
    """Newest first."""


def configured(config: AdaptationConfig) -> bool:
    """Whether the model adapts or at least captures: the status page shows only these."""
    return config.trigger != "off" or config.capture > 0


def adaptation_report(model: LoadedModel, state: ModelAdaptation) -> AdaptationReport:
    """Read on the event loop, where the loop changes ``state``: one consistent view."""
    capture = model.capture
    return {
        "settings": model.config.adaptation,
        "capture": None
        if capture is None
        else {"capacity": capture.capacity, "held": capture.held, "seen": capture.seen},
        "alarmed": state.alarmed,
        "deciding": state.busy,
        "watching": state.watch,
        "decisions": list(reversed(state.decisions)),
    }
