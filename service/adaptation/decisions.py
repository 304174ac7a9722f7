"""What an adaptation decided, and why: kept per model, shown by the API and the status page."""

import datetime
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from service.adaptation.alarm import LayerDrift
from service.adaptation.evidence import CandidateFigures, TrafficFigures
from service.recalibration.report import RecalibrationOutcome

Outcome = Literal["proposed", "activated", "rejected", "rolled_back"]
OUTCOMES: tuple[Outcome, ...] = ("proposed", "activated", "rejected", "rolled_back")
_KEPT = 20  # decisions remembered per model


@dataclass(frozen=True)
class AlarmFigures:
    """A layer's drift when the alarm rang."""

    drift: float | None
    baseline: float | None
    ratio: float | None
    samples: float
    alarmed: bool


@dataclass(frozen=True)
class Decision:
    at: str
    source_version: int
    outcome: Outcome
    version: int | None
    """The candidate version written (None when rejected before writing one); for
    ``rolled_back``, the candidate taken back, ``source_version`` serving again."""
    reasons: tuple[str, ...]
    alarm: Mapping[str, AlarmFigures]
    traffic: TrafficFigures | None = None
    candidate: CandidateFigures | None = None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Watch:
    """An activated candidate under watch: rolled back to ``previous`` unless its own drift
    window settles below the alarm within ``min_samples``."""

    version: int
    previous: int


@dataclass
class ModelAdaptation:
    """One model's adaptation state; touched on the event loop only."""

    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=_KEPT))
    busy: bool = False
    cooldown_until: float = float("-inf")
    watch: Watch | None = None
    alarmed: bool = False
    collecting: int | None = None
    """The version whose capture restarted at the alarm's onset and fills for a decision."""


@dataclass(frozen=True)
class CandidateDecision:
    """What every decision on a written candidate shares."""

    source: int
    candidate: int
    alarm: dict[str, AlarmFigures]
    traffic: TrafficFigures | None
    figures: CandidateFigures

    def decision(self, outcome: Outcome, reasons: list[str]) -> Decision:
        return Decision(
            now(), self.source, outcome, self.candidate, tuple(reasons), self.alarm,
            self.traffic, self.figures,
        )  # fmt: skip


def alarm_figures(layers: list[LayerDrift], alarms: Mapping[str, bool]) -> dict[str, AlarmFigures]:
    return {
        layer.layer: AlarmFigures(
            layer.drift, layer.baseline, layer.ratio, layer.samples, alarms[layer.layer]
        )
        for layer in layers
    }


@dataclass(frozen=True)
class TrafficRecalibration:
    """The answer of a recalibration from captured traffic: the usual outcome, then the
    guardrail figures (``label_shift``: whether class frequencies explain every layer's
    drift; None when the test cannot run, ``label_shift_unavailable`` says why)."""

    recalibration: RecalibrationOutcome
    traffic: TrafficFigures | None
    label_shift_unavailable: str | None
    label_shift: bool | None
    candidate: CandidateFigures | None
