"""What a model call costs, measured once when a version loads, on zeros of its inputs.

Used for choices that depend on the model's size: whether onnxruntime's threads spin, and
whether a call is cheap enough to run on the event loop (``CallCost.inline``).
"""

import time
from collections.abc import Callable

import numpy as np

from service.backends.base import Arrays
from service.backends.signature import ModelSignature
from service.datatypes import to_numpy


def call_seconds(
    predict: Callable[[Arrays], Arrays], signature: ModelSignature, batch: int
) -> float:
    """The fastest of three calls of ``batch`` samples of zeros, after one warm-up call."""
    sample = {
        spec.name: np.zeros((batch, *spec.shape), dtype=to_numpy(spec.datatype))
        for spec in signature.inputs
    }
    predict(sample)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        predict(sample)
        times.append(time.perf_counter() - started)
    return min(times)


class CallCost:
    """Seconds of a call of one sample and of ``max_batch`` samples (``full`` None: not
    measured, the one-sample call being already too slow to matter).

    Measured once at load, then lowered by every call served (``observe``): noise (a busy
    machine, a cold thread pool) only ever adds time, so the fastest call seen is the best
    estimate of the model's own cost, and a load timed on a busy machine corrects itself with
    the first calls. A call of any size bounds the one-sample cost (a call of more samples
    never costs less); only a full batch bounds ``full``."""

    __slots__ = ("full", "max_batch", "one")

    def __init__(self, one: float, full: float | None, max_batch: int) -> None:
        self.one = one
        self.full = full
        self.max_batch = max_batch

    def seconds(self, batch: int) -> float:
        """A call of ``batch`` samples, interpolated linearly between the two measured."""
        if self.full is None or self.max_batch <= 1:
            return self.one * batch
        share = (batch - 1) / (self.max_batch - 1)
        return self.one + share * (self.full - self.one)

    def observe(self, _inputs: Arrays, batch: int, seconds: float) -> None:
        """A call of ``batch`` samples took ``seconds`` (a batcher ``Observer``)."""
        if seconds < self.one:
            self.one = seconds
        if batch == self.max_batch and (self.full is None or seconds < self.full):
            self.full = seconds

    def inline(self, limit: float) -> Callable[[int], bool]:
        """Whether a call of ``batch`` samples is at most ``limit`` seconds, by the estimate
        at the time of asking."""
        return lambda batch: self.seconds(batch) <= limit


def measure(
    predict: Callable[[Arrays], Arrays], signature: ModelSignature, limit: float
) -> CallCost:
    """The model's ``CallCost``; the full batch only when one sample costs ``limit`` or less
    (a large model's full batch could take seconds and gigabytes)."""
    one = call_seconds(predict, signature, 1)
    batch = signature.max_batch_size
    full = call_seconds(predict, signature, batch) if one <= limit and batch > 1 else None
    return CallCost(one, full, batch)
