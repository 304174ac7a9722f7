"""Case e's measurements: recalibration throughput end to end over HTTP, and per batch.

End to end is an npy upload to ``POST .../recalibrate?dry_run=true``, timed by the client from
the first byte sent to the response: receiving, parsing, ghost batches, the calibration
forward and the statistics. Per batch is the service's batch-statistics forward alone
(``Family.batch_stats``, the calibration graph the job runs), called in this process on
batches already in memory: the ceiling that overlapping the upload with the compute aims for.
Both are compared with torch ``update_bn`` on the same module, data and batch size.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.backends.families import family
from service.bench.server import ADMIN_TOKEN, ServerProcess
from service.bench.upload import UploadResult, npy_chunks, npy_header, post_stream
from service.examples.export import INPUT_NAME

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Recalibrated:
    """One dry-run recalibration over HTTP, after a warm-up one."""

    seconds: float
    """Client-side, first byte sent to last response byte."""
    job_seconds: float
    """The job's own ``duration_seconds``."""
    warmup_seconds: float
    """The first recalibration of the version, which also builds its calibration graph."""


def _post(
    server: ServerProcess, model: str, data: npt.NDArray[np.float32], batch: int, chunk: int
) -> UploadResult:
    path = f"/v2/models/{model}/recalibrate?dry_run=true&batch_size={batch}"
    length = len(npy_header(tuple(data.shape))) + data.nbytes
    upload = post_stream(
        server.host,
        server.port,
        path,
        npy_chunks(data, chunk),
        length,
        "application/x-npy",
        AUTH,
    )
    if upload.status != 200:
        raise RuntimeError(f"recalibration failed with {upload.status}: {upload.body[:500]!r}")
    return upload


def recalibrate_over_http(
    server: ServerProcess, model: str, data: npt.NDArray[np.float32], batch: int, chunk: int
) -> Recalibrated:
    """``data`` as an npy body sent ``chunk`` samples a send, recalibrated in batches of
    ``batch`` (dry run); first one batch, so that the calibration graph is built untimed."""
    warmup = _post(server, model, data[:batch], batch, chunk)
    upload = _post(server, model, data, batch, chunk)
    job_seconds = float(json.loads(upload.body)["duration_seconds"])
    return Recalibrated(upload.seconds, job_seconds, warmup.seconds)


def batch_stats_seconds(onnx_file: Path, data: npt.NDArray[np.float32], batch: int) -> float:
    """Seconds of the service's batch-statistics forward over ``data`` in batches of
    ``batch``, after one untimed call (onnxruntime's first run allocates its arenas)."""
    forward = family("onnx").batch_stats(onnx_file, None, [INPUT_NAME])
    batches = [data[start : start + batch] for start in range(0, len(data), batch)]
    forward.batch_moments({INPUT_NAME: batches[0]})
    started = time.perf_counter()
    for block in batches:
        forward.batch_moments({INPUT_NAME: block})
    return time.perf_counter() - started
