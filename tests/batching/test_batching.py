"""The dynamic batcher: batched results equal unbatched ones, errors stay with their request."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.backends.base import Arrays
from service.batching import DynamicBatcher
from service.errors import Overloaded

WEIGHTS = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)


class RecordingModel:
    """A row-wise model (x @ W) that records batch sizes and fails on rows with NaN."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate

    def __call__(self, inputs: Arrays) -> Arrays:
        if self.gate is not None:
            self.gate.wait(5)
        x = inputs["x"]
        self.batches.append(len(x))
        if np.isnan(x).any():
            raise ValueError("NaN row")
        return {"y": x @ WEIGHTS}


def _requests(count: int, rows: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(rows, 6)).astype(np.float32) for _ in range(count)]


async def _submit_all(batcher: DynamicBatcher, xs: list[np.ndarray]) -> list[object]:
    tasks = [batcher.submit({"x": x}, len(x)) for x in xs]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_concurrent_requests_are_batched_and_answered_with_their_own_rows() -> None:
    async def scenario() -> tuple[list[object], list[int]]:
        gate = threading.Event()
        model = RecordingModel(gate)
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model, pool, max_batch_size=8, max_queue=100)
            xs = _requests(10)
            pending = asyncio.ensure_future(_submit_all(batcher, xs))
            await asyncio.sleep(0.05)  # all queued while the first batch is held at the gate
            gate.set()
            results = await pending
            await batcher.close()
        for x, result in zip(xs, results, strict=True):
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], x @ WEIGHTS)
        return results, model.batches

    _, batches = asyncio.run(scenario())
    assert sum(batches) == 20
    assert max(batches) <= 8
    assert len(batches) < 10  # some requests really shared a batch


def test_a_failing_request_does_not_fail_the_others_in_its_batch() -> None:
    async def scenario() -> list[object]:
        gate = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(RecordingModel(gate), pool, max_batch_size=64, max_queue=100)
            xs = _requests(5)
            xs[2][1, 3] = np.nan
            pending = asyncio.ensure_future(_submit_all(batcher, xs))
            await asyncio.sleep(0.05)
            gate.set()
            results = await pending
            await batcher.close()
            return results

    results = asyncio.run(scenario())
    assert isinstance(results[2], ValueError)
    assert all(isinstance(results[i], dict) for i in (0, 1, 3, 4))


def test_a_full_queue_is_refused() -> None:
    async def scenario() -> list[object]:
        gate = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(RecordingModel(gate), pool, max_batch_size=2, max_queue=3)
            pending = asyncio.ensure_future(_submit_all(batcher, _requests(8, rows=1)))
            await asyncio.sleep(0.05)
            gate.set()
            results = await pending
            await batcher.close()
            return results

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert refused and "queue is full" in str(refused[0])
    assert sum(isinstance(r, dict) for r in results) == 8 - len(refused)


@pytest.mark.parametrize("enabled", [True, False])
def test_batching_off_runs_requests_alone(enabled: bool) -> None:
    async def scenario() -> list[int]:
        gate = threading.Event()
        model = RecordingModel(gate)
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model, pool, 64, 100, enabled=enabled)
            pending = asyncio.ensure_future(_submit_all(batcher, _requests(6)))
            await asyncio.sleep(0.05)
            gate.set()
            await pending
            await batcher.close()
        return model.batches

    batches = asyncio.run(scenario())
    assert (max(batches) > 2) == enabled
