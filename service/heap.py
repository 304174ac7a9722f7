"""The garbage collector on a server whose heap is mostly models: freeze what is loaded.

Loading torch, onnx and the models leaves hundreds of thousands of long-lived objects. A
full (generation 2) collection walks all of them, about 0.2 s on the benchmark machine, and
frees nothing: under load CPython ran one about every second, and those pauses were the whole
of the p99 tail. ``settle`` moves everything alive into the permanent generation, which no
collection walks, once the models are loaded and again after each version swap.

``settle`` itself collects first (so the garbage of a dropped version is freed, not frozen
for good), a full collection that blocks the event loop once per load or swap.
"""

import gc
import logging
import time

log = logging.getLogger(__name__)

THRESHOLDS = (10_000, 10, 10)
"""Generation 0 collected every 10,000 net allocations of tracked objects instead of 700: a
request allocates a few dozen (parsed JSON, futures, tasks), so young collections run every
few hundred requests rather than every twenty, and each walks only young objects. Older
generations keep CPython's ratios; with the heap frozen they hold only recent survivors."""


def tune() -> None:
    """Set ``THRESHOLDS``; once, at start-up."""
    gc.set_threshold(*THRESHOLDS)


def settle() -> float:
    """Collect everything, then freeze the survivors; the seconds it took."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    seconds = time.perf_counter() - started
    log.debug("heap settled in %.3f s, %d objects frozen", seconds, gc.get_freeze_count())
    return seconds
