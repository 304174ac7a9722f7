"""``Recalibrator``: runs streamed recalibrations next to serving, one per model at a time.

The stream is consumed chunk by chunk; each chunk is parsed on a worker thread, and its full
ghost batches are run through the batch-statistics forward on the recalibration's own compute
thread while the next chunks are received and parsed: never on the event loop and never on the
model's inference thread. Only when the whole stream was read and checked is a version
written (``ModelRepository.write_version``: temporary folder, fsync, rename), then activated
if asked. Any error, a client disconnect or a client that stops sending for ``idle_timeout``
seconds before that point writes nothing.
"""

import asyncio
import functools
import io
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

from service.backends.base import Arrays, BatchStatsForward
from service.backends.families import family
from service.config import RecalibrationConfig
from service.errors import BodyTimeout, Conflict, ServiceError, ShuttingDown
from service.metrics import ServiceMetrics
from service.recalibration.job import JobResult, RecalibrationJob
from service.recalibration.params import RecalibrationParams, select_layers
from service.recalibration.pipeline import ComputePipeline
from service.recalibration.report import RecalibrationOutcome, RecalibrationReport, build_report
from service.registry import LoadedModel, ModelRegistry
from service.repository import ModelRepository


def _write_version_files(
    dest: Path,
    model: LoadedModel,
    source_dir: Path,
    result: JobResult,
    report: RecalibrationReport,
    provenance: Mapping[str, object] | None,
) -> None:
    config = model.config
    family(config.backend).write_statistics(
        source_dir / config.model_file, dest / config.model_file, result.statistics
    )
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    report_bytes = orjson.dumps(report, option=options)
    if provenance:  # where the data came from, kept next to the report's own keys
        report_bytes = orjson.dumps(orjson.loads(report_bytes) | dict(provenance), option=options)
    (dest / "recalibration.json").write_bytes(report_bytes)
    if len(result.reference) == 1:
        # Through a buffer: numpy's fast path to a real file reports a full disk as a bare
        # OSError without its errno, which would pass for a server fault.
        buffer = io.BytesIO()
        np.save(buffer, next(iter(result.reference.values())), allow_pickle=False)
        (dest / "reference.npy").write_bytes(buffer.getbuffer())
    else:
        np.savez(dest / "reference.npz", **result.reference)  # type: ignore[arg-type]


class Recalibrator:
    def __init__(
        self,
        repository: ModelRepository,
        registry: ModelRegistry,
        max_samples: int | None = None,
        max_bytes: int | None = None,
        threads: int = 0,
        metrics: ServiceMetrics | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        """``idle_timeout``: seconds the body may go without a chunk arriving (None: forever)."""
        self._repository = repository
        self._metrics = metrics
        self._registry = registry
        self._max_samples = max_samples
        self._max_bytes = max_bytes
        self._threads = threads
        self._idle_timeout = idle_timeout
        self._running: set[str] = set()
        self._stopping = asyncio.Event()
        # The last calibration forward built per model: rebuilding it costs a model load and a
        # graph rewrite (seconds for a large model); it is keyed by version and layers.
        self._forwards: dict[str, tuple[int, tuple[str, ...], BatchStatsForward]] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recalibration")

    def stop(self) -> None:
        """Abort running recalibrations: each ends with ``ShuttingDown`` and writes nothing
        (one already renaming its version into place finishes: that step is atomic)."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(
        self,
        model: LoadedModel,
        params: RecalibrationParams,
        content_type: str,
        chunks: AsyncIterator[bytes],
        provenance: Mapping[str, object] | None = None,
    ) -> RecalibrationOutcome:
        """Recalibrate the loaded model version ``model`` on the streamed body. Parameters that
        do not apply are refused (``InvalidInput``) before anything else is checked.
        ``provenance`` adds keys to the written ``recalibration.json`` (an adaptation's
        ``source`` and figures)."""
        settings = params.settings(model.config.recalibration)
        name = model.name
        self._check_stopping()
        if name in self._running:
            raise Conflict(f"a recalibration of model '{name}' is already running")
        self._running.add(name)
        started = time.perf_counter()
        outcome = "aborted"  # the client went away, or the server is shutting down
        try:
            result = await self._run(
                model, params.applied(settings), settings, content_type, chunks, provenance
            )
            outcome = "dry_run" if params.dry_run else "written"
            return result
        except ShuttingDown:
            raise
        except ServiceError:
            outcome = "failed"
            raise
        finally:
            self._running.discard(name)
            self._observe(name, outcome, time.perf_counter() - started)

    def _forward(self, model: LoadedModel, layers: tuple[str, ...]) -> BatchStatsForward:
        """The model version's calibration forward for ``layers``, built on first use.

        Runs on the recalibration executor; at most one recalibration per model runs, so two
        threads never build or use the same entry at once."""
        cached = self._forwards.get(model.name)
        if cached is not None and cached[:2] == (model.version, layers):
            return cached[2]
        source_dir = self._repository.version_dir(model.name, model.version)
        config = model.config
        path, names = source_dir / config.model_file, [spec.name for spec in config.inputs]
        forward = family(config.backend).batch_stats(path, layers, names, self._threads)
        self._forwards[model.name] = (model.version, layers, forward)
        return forward

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise ShuttingDown(
                "the server is shutting down: recalibration aborted, nothing written"
            )

    async def _until_stopped(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, ending with ``ShuttingDown`` as soon as ``stop()`` is called, even while
        waiting for a slow client, and with ``BodyTimeout`` when no chunk arrives for
        ``idle_timeout`` seconds: a stalled upload must not hold the model's lock forever.
        Only the waits for the client count, not the time spent on the chunks."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        iterator = aiter(chunks)
        try:
            while True:
                receive = asyncio.ensure_future(anext(iterator))
                await asyncio.wait(
                    {receive, stopping},
                    timeout=self._idle_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not receive.done():
                    receive.cancel()
                    self._check_stopping()
                    raise BodyTimeout(
                        f"no byte of the body arrived for {self._idle_timeout:g} s "
                        "(recalibration_idle_timeout): recalibration abandoned, nothing written"
                    )
                try:
                    yield receive.result()
                except StopAsyncIteration:
                    return
        finally:
            stopping.cancel()

    async def _stream(self, job: RecalibrationJob, chunks: AsyncIterator[bytes]) -> JobResult:
        """Receive and parse ``chunks`` while the batches already cut run on a compute thread
        of their own (``ComputePipeline``: one group of batches waits at most, and the parsing
        blocks until the compute catches up), so receiving, parsing and the forward overlap.

        A parse error first waits for the batches before it: an error of an earlier batch
        wins, as if every batch ran as soon as it was cut. On any exit before the end
        (disconnect, idle timeout, shutdown, cancellation) the waiting batches are dropped and
        the running one is waited for, so the model's forward is idle again on return."""
        loop = asyncio.get_running_loop()
        pipeline: ComputePipeline[Arrays] = ComputePipeline(
            job.compute, depth=1, name="recalibration-compute"
        )

        def parse(cut: Callable[[], list[Arrays]]) -> None:
            try:
                batches = cut()
            except Exception:
                pipeline.join()  # raises the error of an earlier batch, if any
                raise
            pipeline.put(batches)

        def parse_end() -> None:
            parse(job.parse_end)
            pipeline.join()

        try:
            async for chunk in self._until_stopped(chunks):
                if chunk:
                    await loop.run_in_executor(
                        self._executor, parse, functools.partial(job.parse, chunk)
                    )
            await loop.run_in_executor(self._executor, parse_end)
        finally:
            pipeline.abort()
            await asyncio.shield(asyncio.wrap_future(pipeline.stopped))
        return await loop.run_in_executor(self._executor, job.result)

    def _observe(self, name: str, outcome: str, seconds: float) -> None:
        if self._metrics is None:
            return
        self._metrics.recalibrations.labels(name, outcome).inc()
        self._metrics.recalibration_duration.labels(name).observe(seconds)

    async def _run(
        self,
        model: LoadedModel,
        params: RecalibrationParams,
        settings: RecalibrationConfig,
        content_type: str,
        chunks: AsyncIterator[bytes],
        provenance: Mapping[str, object] | None,
    ) -> RecalibrationOutcome:
        """``params`` as applied: with the ``settings`` in effect."""
        loop = asyncio.get_running_loop()
        layers = select_layers(model.backend.layers, params.layers)
        source_dir = self._repository.version_dir(model.name, model.version)
        names = tuple(layer.name for layer in layers)
        forward = await loop.run_in_executor(self._executor, self._forward, model, names)
        job = RecalibrationJob(
            model.config,
            layers,
            forward,
            settings,
            content_type,
            self._max_samples,
            self._max_bytes,
        )
        result = await self._stream(job, chunks)
        self._check_stopping()
        if self._metrics is not None:
            self._metrics.recalibration_samples.labels(model.name).inc(result.samples)
        report = build_report(model.name, model.version, params, content_type, result)
        if params.dry_run:
            return RecalibrationOutcome.of(report, None, activated=False)
        write = functools.partial(
            _write_version_files,
            model=model,
            source_dir=source_dir,
            result=result,
            report=report,
            provenance=provenance,
        )
        new_version = await loop.run_in_executor(
            self._executor, self._repository.write_version, model.name, write
        )
        if params.activate:
            await self._registry.activate(model.name, new_version)
        return RecalibrationOutcome.of(report, new_version, activated=params.activate)
