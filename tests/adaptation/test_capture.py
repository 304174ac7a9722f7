"""The traffic reservoir: uniform over the stream, independent of how it is batched, rows of
every input kept together, bounded."""

import numpy as np
import pytest

from service.adaptation.capture import TrafficCapture, capture_bytes
from service.config import TensorSpec

SPECS = [
    TensorSpec(name="a", datatype="FP32", shape=[2]),
    TensorSpec(name="b", datatype="INT64", shape=[1]),
]


def _stream(capture: TrafficCapture, n: int, batches: list[int]) -> None:
    """Samples ``0 .. n-1`` (``a = [i, -i]``, ``b = [i]``) in batches of the given sizes."""
    start, sizes = 0, iter(batches * n)
    while start < n:
        size = min(next(sizes), n - start)
        index = np.arange(start, start + size)
        inputs = {"a": np.stack([index, -index], axis=1).astype(np.float32), "b": index[:, None]}
        capture.offer(inputs, size)
        start += size


def _held(capture: TrafficCapture) -> np.ndarray:
    held = capture.samples()
    np.testing.assert_array_equal(held["a"][:, 0], held["b"][:, 0])  # rows stay together
    np.testing.assert_array_equal(held["a"][:, 1], -held["b"][:, 0])
    return np.asarray(held["b"][:, 0])


def test_until_full_every_sample_is_held_in_order() -> None:
    capture = TrafficCapture(SPECS, 50)
    _stream(capture, 37, [5])
    np.testing.assert_array_equal(_held(capture), np.arange(37))
    assert capture.held == 37 and capture.seen == 37


@pytest.mark.parametrize("batches", [[1], [7], [64], [3, 50, 1]])
def test_batching_does_not_change_what_is_held(batches: list[int]) -> None:
    one_by_one = TrafficCapture(SPECS, 50, seed=3)
    _stream(one_by_one, 5000, [1])
    batched = TrafficCapture(SPECS, 50, seed=3)
    _stream(batched, 5000, batches)
    np.testing.assert_array_equal(_held(batched), _held(one_by_one))
    assert batched.held == 50 and len(set(_held(batched).tolist())) == 50


def test_every_position_is_held_with_probability_capacity_over_seen() -> None:
    """Over 2,000 seeds, each tenth of a 1,000-sample stream holds a tenth of the reservoir:
    a chi-square test against the uniform expectation (p > 0.001 at 9 degrees of freedom)."""
    capacity, n, runs = 20, 1000, 2000
    counts = np.zeros(10)
    for seed in range(runs):
        capture = TrafficCapture(SPECS, capacity, seed=seed)
        _stream(capture, n, [16])
        counts += np.bincount(_held(capture) // (n // 10), minlength=10)
    expected = runs * capacity / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.88, (chi2, counts)


def test_restart_forgets_and_memory_is_the_declared_bound() -> None:
    capture = TrafficCapture(SPECS, 50)
    _stream(capture, 500, [10])
    capture.restart()
    assert capture.seen == 0 and capture.held == 0 and _held(capture).size == 0
    _stream(capture, 10, [10])
    np.testing.assert_array_equal(_held(capture), np.arange(10))
    assert capture_bytes(SPECS, 50) == 50 * (2 * 4 + 8)
    assert capture.nbytes == capture_bytes(SPECS, 50)
