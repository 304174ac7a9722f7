"""Dynamic batching: requests queued for one model version run together in one model call.

Safe because every backend serves in eval mode: a sample's output does not depend on the other
samples in its batch. Greedy by default: when the model is idle, the worker takes whatever is
queued (up to ``max_batch_size`` samples) and never waits; with ``max_delay_ms`` > 0 it waits up to
that long for a fuller batch. One future per request; results are sliced back by row offsets.

A call runs on the model's thread, or on the event loop itself when ``inline`` says the call is
far cheaper than the hand-off to a thread and back (``service.backends.cost``). The request
timeout is kept by one timer per batcher, armed at the oldest waiting request's deadline, not by
a timer per request.
"""

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.backends.base import Arrays
from service.errors import Overloaded, Timeout

Predict = Callable[[Arrays], Arrays]
Observer = Callable[[Arrays, int, float], None]
"""Told ``(inputs, samples, compute seconds)`` after every successful model call."""
Inline = Callable[[int], bool]
"""Whether a call of this many samples runs on the event loop (else on the model's thread)."""


def _never(_: int) -> bool:
    return False


@dataclass
class _Pending:
    inputs: Arrays
    size: int
    deadline: float
    future: asyncio.Future[Arrays] = field(repr=False)


def _concat(items: list[_Pending]) -> Arrays:
    if len(items) == 1:
        return items[0].inputs
    return {name: np.concatenate([it.inputs[name] for it in items]) for name in items[0].inputs}


class DynamicBatcher:
    """Queue and batch requests for one ``predict`` function, run on ``executor``.

    Must be created and used on one event loop. ``close()`` lets queued requests finish.
    A request without a result ``timeout`` seconds after ``submit`` fails with ``Timeout``.
    """

    def __init__(
        self,
        predict: Predict,
        executor: Executor,
        max_batch_size: int,
        max_queue: int,
        max_delay_ms: float = 0.0,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
        on_served: Observer | None = None,
        timeout: float = 60.0,
        inline: Inline = _never,
    ) -> None:
        self._predict = predict
        self._executor = executor
        self._max_batch = max_batch_size
        self._max_queue = max_queue
        self._delay = max_delay_ms / 1000.0 if enabled else 0.0
        self._enabled = enabled
        self._on_batch = on_batch
        self._on_served = on_served
        self._timeout = timeout
        self._inline = inline
        self._queue: collections.deque[_Pending] = collections.deque()
        self._running: list[_Pending] = []
        """The batch in the model call now; older than everything queued."""
        self._wakeup = asyncio.Event()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self._worker = self._loop.create_task(self._run())

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Arrays, size: int) -> Arrays:
        """Run ``inputs`` (``size`` samples, at most ``max_batch_size``) in some batch."""
        if len(self._queue) >= self._max_queue:
            raise Overloaded(f"queue is full ({self._max_queue} requests waiting)")
        loop = self._loop
        future: asyncio.Future[Arrays] = loop.create_future()
        deadline = time.monotonic() + self._timeout
        self._queue.append(_Pending(inputs, size, deadline, future))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._expire)
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop after the requests already queued have been answered."""
        self._closing = True
        self._wakeup.set()
        await self._worker
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _fail_expired(self, items: list[_Pending]) -> None:
        # time.monotonic, not loop.time: uvloop's is cached per loop iteration, in ms.
        now = time.monotonic()
        for item in items:
            if item.deadline <= now and not item.future.done():
                message = f"no result within the request timeout of {self._timeout} s"
                item.future.set_exception(Timeout(message))

    def _expire(self) -> None:
        """Fail every request past its deadline; re-arm at the next oldest one's."""
        self._watchdog = None
        self._fail_expired(self._running)
        now = time.monotonic()
        while self._queue and self._queue[0].deadline <= now:
            self._fail_expired([self._queue.popleft()])
        waiting = [it for it in self._running if not it.future.done()]
        oldest = waiting[0] if waiting else (self._queue[0] if self._queue else None)
        if oldest is not None:
            self._watchdog = self._loop.call_later(oldest.deadline - now, self._expire)

    async def _take(self) -> list[_Pending]:
        if self._delay > 0 and sum(p.size for p in self._queue) < self._max_batch:
            await asyncio.sleep(self._delay)
        items = [self._queue.popleft()]
        total = items[0].size
        while self._enabled and self._queue and total + self._queue[0].size <= self._max_batch:
            item = self._queue.popleft()
            items.append(item)
            total += item.size
        return items

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            items = await self._take()
            self._fail_expired(items)
            items = [it for it in items if not it.future.done()]  # cancelled or timed out
            if not items:
                continue
            self._running = items
            try:
                await self._serve(items)
            finally:
                self._running = []

    async def _serve(self, items: list[_Pending]) -> None:
        size = sum(it.size for it in items)
        if self._on_batch is not None:
            self._on_batch(size)
        inputs = _concat(items)
        try:
            if self._inline(size):
                outputs, seconds = self._timed(inputs)
            else:
                outputs, seconds = await self._loop.run_in_executor(
                    self._executor, self._timed, inputs
                )
        except Exception as exc:
            if len(items) == 1:
                if not items[0].future.done():
                    items[0].future.set_exception(exc)
            else:
                await self._run_alone(items)
            return
        if self._on_served is not None:
            self._on_served(inputs, size, seconds)
        offset = 0
        for item in items:
            if not item.future.done():
                rows = slice(offset, offset + item.size)
                item.future.set_result({k: v[rows] for k, v in outputs.items()})
            offset += item.size

    def _timed(self, inputs: Arrays) -> tuple[Arrays, float]:
        started = time.perf_counter()
        outputs = self._predict(inputs)
        return outputs, time.perf_counter() - started

    async def _run_alone(self, items: list[_Pending]) -> None:
        """A batch failed: run its requests one by one so one bad request fails only itself."""
        for item in items:
            try:
                result = await self._loop.run_in_executor(
                    self._executor, self._predict, item.inputs
                )
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
            else:
                if not item.future.done():
                    item.future.set_result(result)
