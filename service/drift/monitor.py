"""Drift monitoring of one served model version: sampled taps off the request path.

``observe`` runs on the event loop after every served batch. It only counts and decides, in
O(1): a batch is tapped when no tap of this monitor is pending or running and the tap budget
(``budget.TapBudget``) allows it. With ``max_overhead >= 1`` every batch is tapped, in order
(an unbounded queue: for tests and reference comparisons, not for production traffic).

Taps run on ``executor`` (a drift thread shared by models): the tapped forward (created
lazily there by ``taps_factory``, as it loads a model), per-sample moments pooled per layer,
then merged into the layer windows (``window.LayerWindow``) under a short lock. The baseline
(``baseline.compute_baseline``) is computed once on the executor when the monitor starts or,
if the tapped forward cannot be created then, after the first tap that creates it.
``snapshot`` copies the immutable windows under the lock and scores them outside it. Errors
in the background are logged, counted and reported (``failures.TapFailures``), never raised
into the request path; each one pauses tapping for a backoff that grows while they persist,
and the batches queued at that moment are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.backends.base import Arrays, NormLayer, TappedForward
from service.backends.taps import SampleMoments
from service.drift.baseline import LayerBaseline, compute_baseline, reference_size
from service.drift.budget import TapBudget
from service.drift.failures import TapFailures
from service.drift.report import DriftSnapshot, layer_report
from service.drift.window import LayerWindow

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """The monitor was closed."""


@dataclass(frozen=True)
class _Batch:
    generation: int  # taps of batches observed before a reset are dropped
    inputs: Arrays
    size: int


class DriftMonitor:
    """Per served model version; thread-safe. ``inputs`` given to ``observe`` are kept until
    tapped and must not be modified by the caller afterwards."""

    def __init__(
        self,
        layers: tuple[NormLayer, ...],
        taps_factory: Callable[[], TappedForward],
        executor: Executor,
        half_life: float,
        max_overhead: float = 0.03,
        reference: Arrays | None = None,
        max_batch_size: int = 64,
        *,
        reference_label: str = "reference.npy",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not half_life > 0.0 or not max_overhead > 0.0 or max_batch_size < 1:
            raise ValueError("half_life, max_overhead and max_batch_size must be positive")
        self.half_life = float(half_life)
        self.max_overhead = float(max_overhead)
        self.layers = tuple(layer for layer in layers if not layer.batch_independent)
        self._factory = taps_factory
        self._executor = executor
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._taps_lock = threading.Lock()  # one forward at a time; guards lazy creation
        self._taps: TappedForward | None = None
        self._closed = False
        self._queue: deque[_Batch] = deque()
        self._draining = False  # a drain job is submitted: the "pending tap"
        self._outstanding = 0  # submitted jobs not finished
        self._generation = 0
        self._windows = {layer.name: LayerWindow.empty(layer.channels) for layer in self.layers}
        self._baseline: dict[str, LayerBaseline] | None = None
        self._baseline_label: str | None = None
        self._deferred_baseline: tuple[Arrays, int] | None = None  # the forward failed to load
        self._batches_seen = self._batches_tapped = self._samples_seen = self._samples_tapped = 0
        self._budget = TapBudget(self.max_overhead)
        self._failures = TapFailures()
        count = 0 if reference is None else reference_size(reference)
        if reference is not None and count > 0 and self.layers:
            self._baseline_label = f"{reference_label} ({count} samples)"
            self._outstanding = 1
            executor.submit(self._run_baseline, reference, max_batch_size)

    def observe(self, inputs: Arrays, batch_size: int, compute_seconds: float) -> None:
        """Account a served batch and maybe queue it for a tap. O(1); never raises."""
        try:
            with self._lock:
                now = self._clock()
                self._batches_seen += 1
                self._samples_seen += batch_size
                self._budget.served(now, compute_seconds)
                if not self._should_tap(now, batch_size, compute_seconds):
                    return
                self._queue.append(_Batch(self._generation, inputs, batch_size))
                if self._draining:
                    return
                self._draining = True
                self._outstanding += 1
            self._submit_drain()
        except Exception as exc:
            self._error("observe", exc)

    def _should_tap(self, now: float, batch_size: int, compute_seconds: float) -> bool:
        if self._closed or self._failures.paused(now):
            return False
        if self._budget.unlimited:
            return True
        if self._draining:
            return False
        return self._budget.allows(batch_size, compute_seconds)

    def _submit_drain(self) -> None:
        try:
            self._executor.submit(self._drain)
        except BaseException:
            with self._lock:
                self._queue.clear()
                self._draining = False
                self._job_done_locked()
            raise

    def _drain(self) -> None:
        """Tap queued batches in order until the queue is empty."""
        try:
            while True:
                with self._lock:
                    if self._closed or not self._queue:
                        self._draining = False
                        return
                    batch = self._queue.popleft()
                try:
                    self._tap(batch)
                except _Stopped:
                    return
                except Exception as exc:
                    self._error("tap", exc)
                else:
                    self._resume_baseline()
        finally:
            with self._lock:
                self._draining = False
                self._job_done_locked()
            self._release_if_closed()

    def _tap(self, batch: _Batch) -> None:
        taps = self._ensure_taps()
        with self._taps_lock:
            start = self._clock()
            try:
                sampled = taps.sample_moments(batch.inputs)
                pooled = {name: sampled[name].pooled() for name in self._windows if name in sampled}
            finally:
                elapsed = self._clock() - start
                with self._lock:
                    self._budget.tapped(elapsed, batch.size)
        for name, moments in pooled.items():
            if moments.channels != self._windows[name].moments.channels:
                raise ValueError(f"layer {name}: tapped {moments.channels} channels")
            if not (np.isfinite(moments.mean).all() and np.isfinite(moments.m2).all()):
                raise ValueError(f"layer {name}: non-finite input; batch not merged")
        with self._lock:
            self._failures.succeeded()
            if self._closed or batch.generation != self._generation:
                return
            for name, moments in pooled.items():
                self._windows[name] = self._windows[name].add(moments, batch.size, self.half_life)
            self._batches_tapped += 1
            self._samples_tapped += batch.size

    def _ensure_taps(self) -> TappedForward:
        with self._taps_lock:
            if self._closed:
                raise _Stopped
            if self._taps is None:  # after a failure, tried again only once the backoff is over
                self._taps = self._factory()
            return self._taps

    def _run_baseline(self, reference: Arrays, chunk: int) -> None:
        created = False
        try:
            taps = self._ensure_taps()
            created = True

            def sample(inputs: Arrays) -> dict[str, SampleMoments]:
                with self._taps_lock:
                    if self._closed:
                        raise _Stopped
                    return taps.sample_moments(inputs)

            baseline = compute_baseline(sample, self.layers, reference, chunk)
            with self._lock:
                self._baseline = baseline
        except _Stopped:
            pass
        except Exception as exc:
            with self._lock:
                if created:  # the computation itself failed, and would again
                    self._baseline_label = None
                else:  # retried once a tap has created the tapped forward
                    self._deferred_baseline = (reference, chunk)
            self._error("baseline", exc)
        finally:
            with self._lock:
                self._job_done_locked()
            self._release_if_closed()

    def _resume_baseline(self) -> None:
        """Compute, on the drain job's thread, a baseline deferred by a failed forward load."""
        with self._lock:
            deferred, self._deferred_baseline = self._deferred_baseline, None
            if deferred is None or self._closed:
                return
            self._outstanding += 1  # _run_baseline finishes as a job of its own
        self._run_baseline(*deferred)

    def _job_done_locked(self) -> None:
        self._outstanding -= 1
        self._idle.notify_all()

    def _release_if_closed(self) -> None:
        if self._closed and self._taps_lock.acquire(blocking=False):
            self._taps = None
            self._taps_lock.release()

    def _error(self, where: str, error: Exception) -> None:
        with self._lock:
            count = self._failures.failed(where, error, self._clock())
            self._queue.clear()
            delay = self._failures.delay
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, ...: visible, never a flood
            message = "drift %s failed (%d errors so far); tapping paused for %g s"
            log.error(message, where, count, delay, exc_info=error)

    def snapshot(self, per_channel: bool = True) -> DriftSnapshot:
        """Counters and per-layer scores now; per-channel detail unless ``per_channel`` is
        False. The windows are copied under the lock and scored outside it."""
        with self._lock:
            windows = dict(self._windows)
            baseline = self._baseline
            snapshot: DriftSnapshot = {
                "half_life": self.half_life,
                "max_overhead": self.max_overhead,
                "batches_seen": self._batches_seen,
                "batches_tapped": self._batches_tapped,
                "samples_seen": self._samples_seen,
                "samples_tapped": self._samples_tapped,
                "baseline": self._baseline_label,
                "errors": self._failures.count,
                "last_error": self._failures.last_error,
                "last_error_at": self._failures.last_error_at,
                "layers": [],
            }
        baselines = baseline or {}
        snapshot["layers"] = [
            layer_report(layer, windows[layer.name], baselines.get(layer.name), per_channel)
            for layer in self.layers
        ]
        return snapshot

    def reset(self) -> None:
        """Restart every window (admin drift reset); queued and running taps are dropped."""
        with self._lock:
            self._generation += 1
            self._queue.clear()
            self._windows = {
                name: LayerWindow.empty(w.moments.channels) for name, w in self._windows.items()
            }

    def flush(self, timeout: float) -> None:
        """Wait until every submitted job (taps, baseline) has finished; ``TimeoutError`` if not
        within ``timeout`` seconds."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._outstanding == 0, timeout):
                raise TimeoutError(f"drift jobs still running after {timeout} s")

    def close(self) -> None:
        """Stop tapping and drop the tapped forward; does not wait for a running job."""
        with self._lock:
            self._closed = True
            self._queue.clear()
        self._release_if_closed()

    @property
    def serve_seconds_total(self) -> float:
        with self._lock:
            return self._budget.serve_seconds

    @property
    def tap_seconds_total(self) -> float:
        with self._lock:
            return self._budget.tap_seconds

    @property
    def errors(self) -> int:
        with self._lock:
            return self._failures.count
