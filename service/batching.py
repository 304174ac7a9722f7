"""Dynamic batching: requests queued for one model version run together in one model call.

Safe because every backend serves in eval mode: a sample's output does not depend on the other
samples in its batch. Greedy by default: when the model is idle, the worker takes whatever is
queued (up to ``max_batch_size`` samples) and never waits; with ``max_delay_ms`` > 0 it waits up to
that long for a fuller batch. One future per request; results are sliced back by row offsets.
"""

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.backends.base import Arrays
from service.errors import Overloaded

Predict = Callable[[Arrays], Arrays]
Observer = Callable[[Arrays, int, float], None]
"""Told ``(inputs, samples, compute seconds)`` after every successful model call."""


@dataclass
class _Pending:
    inputs: Arrays
    size: int
    future: asyncio.Future[Arrays] = field(repr=False)


def _concat(items: list[_Pending]) -> Arrays:
    if len(items) == 1:
        return items[0].inputs
    return {name: np.concatenate([it.inputs[name] for it in items]) for name in items[0].inputs}


class DynamicBatcher:
    """Queue and batch requests for one ``predict`` function, run on ``executor``.

    Must be created and used on one event loop. ``close()`` lets queued requests finish.
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
    ) -> None:
        self._predict = predict
        self._executor = executor
        self._max_batch = max_batch_size
        self._max_queue = max_queue
        self._delay = max_delay_ms / 1000.0 if enabled else 0.0
        self._enabled = enabled
        self._on_batch = on_batch
        self._on_served = on_served
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._run())

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Arrays, size: int) -> Arrays:
        """Run ``inputs`` (``size`` samples, at most ``max_batch_size``) in some batch."""
        if len(self._queue) >= self._max_queue:
            raise Overloaded(f"queue is full ({self._max_queue} requests waiting)")
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(inputs, size, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Stop after the requests already queued have been answered."""
        self._closing = True
        self._wakeup.set()
        await self._worker

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
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            items = await self._take()
            items = [it for it in items if not it.future.done()]  # cancelled by their client
            if not items:
                continue
            if self._on_batch is not None:
                self._on_batch(sum(it.size for it in items))
            inputs = _concat(items)
            try:
                outputs, seconds = await loop.run_in_executor(self._executor, self._timed, inputs)
            except Exception as exc:
                if len(items) == 1:
                    items[0].future.set_exception(exc)
                else:
                    await self._run_alone(items)
                continue
            if self._on_served is not None:
                self._on_served(inputs, sum(it.size for it in items), seconds)
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
        loop = asyncio.get_running_loop()
        for item in items:
            try:
                result = await loop.run_in_executor(self._executor, self._predict, item.inputs)
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
            else:
                if not item.future.done():
                    item.future.set_result(result)
