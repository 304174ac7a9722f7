"""The recalibration report: ``recalibration.json`` in the new version, and the response body.

Frozen dataclasses, turned into JSON only where they leave the process (the response, the
file) by orjson, which writes a dataclass as an object of its fields in declaration order and
numpy arrays as lists (``OPT_SERIALIZE_NUMPY``).
"""

import dataclasses
import datetime
from dataclasses import dataclass

import numpy as np

from service.recalibration.job import JobResult
from service.recalibration.params import RecalibrationParams
from service.stats.drift import DriftScore

TAIL_POLICY = "a trailing partial batch is dropped unless it is the only batch"


@dataclass(frozen=True)
class TailReport:
    samples: int
    used: bool
    policy: str = TAIL_POLICY


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str
    channels: int
    drift_before: DriftScore
    """The stream's drift from the statistics it replaces."""
    drift_after: DriftScore
    """The stream's drift from the new statistics."""
    running_mean: np.ndarray
    running_var: np.ndarray


@dataclass(frozen=True)
class RecalibrationReport:
    """What was recalibrated from what, with which parameters and data; kept with the version."""

    model: str
    source_version: str
    created: str
    parameters: RecalibrationParams
    content_type: str
    bytes: int
    samples: int
    samples_used: int
    batches: int
    tail: TailReport
    duration_seconds: float
    layers: tuple[LayerReport, ...]


@dataclass(frozen=True)
class RecalibrationOutcome(RecalibrationReport):
    """The response: the report, then the version written (None for a dry run) and whether it
    is now the active one."""

    version: str | None
    activated: bool

    @classmethod
    def of(
        cls, report: RecalibrationReport, version: int | None, activated: bool
    ) -> "RecalibrationOutcome":
        fields = {field.name: getattr(report, field.name) for field in dataclasses.fields(report)}
        return cls(**fields, version=None if version is None else str(version), activated=activated)


def build_report(
    model: str,
    source_version: int,
    params: RecalibrationParams,
    content_type: str,
    result: JobResult,
) -> RecalibrationReport:
    """``params`` as applied (every value in effect)."""
    batching = result.batching
    return RecalibrationReport(
        model=model,
        source_version=str(source_version),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        parameters=params,
        content_type=content_type,
        bytes=result.bytes,
        samples=result.samples,
        samples_used=batching.samples_used,
        batches=batching.batches,
        tail=TailReport(batching.tail_samples, batching.tail_used),
        duration_seconds=round(result.seconds, 6),
        layers=tuple(
            LayerReport(
                r.layer.name, r.layer.kind, r.layer.channels, r.before, r.after, r.mean, r.var
            )
            for r in result.layers
        ),
    )
