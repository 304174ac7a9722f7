"""The recalibration report: the response body, and ``recalibration.json`` in the new version."""

import datetime
from typing import Any

from service.recalibration.job import JobResult
from service.recalibration.params import RecalibrationParams


def build_report(
    model: str,
    source_version: int,
    params: RecalibrationParams,
    content_type: str,
    result: JobResult,
) -> dict[str, Any]:
    batching = result.batching
    return {
        "model": model,
        "source_version": str(source_version),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "parameters": params.as_dict(),
        "content_type": content_type,
        "bytes": result.bytes,
        "samples": result.samples,
        "samples_used": batching.samples_used,
        "batches": batching.batches,
        "tail": {
            "samples": batching.tail_samples,
            "used": batching.tail_used,
            "policy": "a trailing partial batch is dropped unless it is the only batch",
        },
        "duration_seconds": round(result.seconds, 6),
        "layers": [
            {
                "name": r.layer.name,
                "kind": r.layer.kind,
                "channels": r.layer.channels,
                "drift_before": r.before.as_dict(),
                "drift_after": r.after.as_dict(),
                "running_mean": r.mean,
                "running_var": r.var,
            }
            for r in result.layers
        ],
    }
