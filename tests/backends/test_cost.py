"""The call cost behind the in-loop rule (``service.backends.cost``): measured at load, then
lowered by the calls served, so a load timed on a busy machine does not keep a cheap model off
the event loop for the life of its version.

References: the interpolation written out in the test, the thread each model call ran on, and
the digits model's own calls through the registry.
"""

import asyncio
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from service.backends.base import Arrays
from service.backends.cost import CallCost
from service.batching import DynamicBatcher
from service.registry import ModelRegistry
from service.repository import ModelRepository
from tests.conftest import BUNDLED_MODELS
from tests.helpers import sample_inputs

LIMIT = 100e-6
NOTHING: Arrays = {}


def test_the_estimate_falls_to_the_fastest_call_seen_and_never_rises() -> None:
    cost = CallCost(one=500e-6, full=None, max_batch=64)  # a load timed on a busy machine
    inline = cost.inline(LIMIT)
    assert not inline(1)

    cost.observe(NOTHING, 5, 30e-6)  # five samples in 30 us: one sample costs at most that
    assert cost.one == 30e-6 and cost.full is None
    assert inline(1) and inline(3) and not inline(4)  # no full batch seen: 30 us a sample

    cost.observe(NOTHING, 64, 400e-6)
    assert cost.one == 30e-6 and cost.full == 400e-6
    for batch in (1, 10, 20, 64):
        expected = 30e-6 + (batch - 1) / 63 * (400e-6 - 30e-6)
        assert np.isclose(cost.seconds(batch), expected, rtol=1e-12, atol=0.0)
        assert inline(batch) == (expected <= LIMIT)
    assert inline(10) and not inline(20)

    for batch, seconds in ((1, 1.0), (64, 1.0), (7, 1e-3)):  # slower calls: noise, ignored
        cost.observe(NOTHING, batch, seconds)
    assert (cost.one, cost.full) == (30e-6, 400e-6)


def test_a_batcher_moves_calls_onto_the_loop_once_it_has_seen_them_cheap() -> None:
    threads: list[int] = []

    def predict(inputs: Arrays) -> Arrays:
        threads.append(threading.get_ident())
        return {"y": inputs["x"] * 2.0}

    async def scenario() -> int:
        cost = CallCost(one=1.0, full=None, max_batch=8)  # "one second": never inline
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(
                predict,
                pool,
                max_batch_size=8,
                max_queue=10,
                on_served=cost.observe,
                inline=cost.inline(10e-3),  # far above a 1-row multiply
            )
            for row in range(3):
                x = np.full((1, 4), row, dtype=np.float32)
                result = await batcher.submit({"x": x}, 1)
                np.testing.assert_array_equal(result["y"], x * 2.0)
            await batcher.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert threads[0] != loop_thread  # the load's estimate: on the model's thread
    assert threads[1:] == [loop_thread, loop_thread]  # seen cheap: on the loop


def test_the_registry_lowers_a_loaded_versions_cost_with_the_calls_it_serves(
    tmp_path: Path,
) -> None:
    shutil.copytree(BUNDLED_MODELS / "digits", tmp_path / "digits")
    x = sample_inputs("digits", 1)

    async def scenario() -> tuple[float, float, float]:
        registry = ModelRegistry(ModelRepository(tmp_path), inline_call_seconds=LIMIT)
        await registry.load_all(["digits"])
        try:
            model = registry.get("digits")
            assert model.cost is not None
            measured = model.cost.one
            model.cost.one, model.cost.full = 1.0, None  # as if the load was timed while busy
            await model.infer({"input": x}, 1)
            return measured, model.cost.one, model.cost.seconds(1)
        finally:
            await registry.close()

    measured, after, estimate = asyncio.run(scenario())
    assert 0.0 < measured < 1.0 and 0.0 < after < 1.0 and estimate == after
