"""How long a full garbage collection takes in a server process, before and after
``service.heap.settle`` (the ``gc.freeze`` bnserve does once models are loaded).

Loads the bundled models the way ``bnserve serve`` does (the registry, in its event loop),
then times ``gc.collect()`` (a full, generation 2 collection, what CPython runs on its own
under load) five times before settling the heap and five times after. Output committed as
``docs/gc-pause.txt``:

    python scripts/gc_pause.py > docs/gc-pause.txt
"""

import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

from service.heap import settle
from service.registry import ModelRegistry
from service.repository import ModelRepository

MODELS = Path(__file__).resolve().parent.parent / "models"


def _full_collections(times: int = 5) -> list[float]:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        gc.collect()
        seconds.append(time.perf_counter() - started)
    return seconds


def _line(label: str, seconds: list[float]) -> str:
    ms = ", ".join(f"{s * 1e3:.3f}" for s in seconds)
    return f"{label}: median {statistics.median(seconds) * 1e3:.3f} ms ({ms} ms)"


async def main() -> None:
    registry = ModelRegistry(ModelRepository(MODELS))
    try:
        await registry.load_all(registry.repository.model_names())  # as the server does
        gc.unfreeze()  # back to the heap as CPython would leave it
        tracked = len(gc.get_objects())
        print(f"python {sys.version.split()[0]}, {len(registry.names())} models loaded")
        label = f"full collection, heap not frozen ({tracked} tracked objects)"
        print(_line(label, _full_collections()))
        settle()
        print(f"frozen: {gc.get_freeze_count()} objects")
        print(_line("full collection after service.heap.settle()", _full_collections()))
    finally:
        await registry.close()


if __name__ == "__main__":
    asyncio.run(main())
