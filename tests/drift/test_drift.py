"""Drift core: decayed windows, budgeted taps, bootstrap baseline, Prometheus collector.

The tapped forward is a fake whose layer inputs are known (the raw input reshaped, and its
spatial mean), so every expected value is an independent float64 numpy computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.backends.base import Arrays, NormLayer
from service.backends.taps import SampleMoments
from service.drift import DriftCollector, DriftMonitor, LayerBaseline
from service.drift.baseline import SIZES, ReferenceSamples, compute_baseline

F64 = npt.NDArray[np.float64]
C, H, W = 3, 2, 4
EPS = 1e-5
MU = np.array([1.0, -2.0, 0.5])
S2 = np.array([4.0, 0.25, 1.0])


def layer_inputs(x: npt.NDArray[np.generic]) -> dict[str, F64]:
    """The fake model: ``conv`` sees the input itself, ``fc`` its spatial mean; (N, C, P)."""
    z = np.asarray(x, np.float64).reshape(len(x), C, H * W)
    return {"conv": z, "fc": z.mean(axis=2, keepdims=True)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTaps:
    """Per-sample moments of ``layer_inputs``; advances ``clock`` by ``cost`` per sample."""

    layers = ("conv", "fc")

    def __init__(self, clock: FakeClock | None = None, cost: float = 0.0) -> None:
        self.clock, self.cost = clock, cost
        self.seen: list[npt.NDArray[np.generic]] = []
        self.fail = False
        self.during: Callable[[], None] = lambda: None  # runs inside each tap

    def sample_moments(self, inputs: Arrays) -> dict[str, SampleMoments]:
        if self.fail:
            raise RuntimeError("tap failed")
        self.during()
        x = inputs["x"]
        if self.clock is not None:
            self.clock.now += self.cost * len(x)
        self.seen.append(x)
        out = {}
        for name, z in layer_inputs(x).items():
            mean = z.mean(axis=2)
            out[name] = SampleMoments(z.shape[2], mean, ((z - mean[..., None]) ** 2).sum(axis=2))
        return out


class InlineExecutor(Executor):
    """Runs every job at once, on the caller's thread: deterministic tests."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class ManualExecutor(Executor):
    """Keeps jobs until ``run(i)``: lets a test choose when background work happens."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs.append(lambda: fn(*args, **kwargs))
        return Future()

    def run(self, index: int = 0) -> None:
        self.jobs.pop(index)()


def norm_layers(with_unused: bool = False) -> tuple[NormLayer, ...]:
    layers = [
        NormLayer("conv", "BatchNorm", C, EPS, MU, S2),
        NormLayer("fc", "BatchNorm", C, EPS, MU, S2 / (H * W)),  # matches the traffic too
        NormLayer("ln", "LayerNorm", C, EPS, None, None),  # no stored statistics: not monitored
    ]
    if with_unused:
        layers.append(NormLayer("unused", "BatchNorm", 2, EPS, np.zeros(2), np.ones(2)))
    return tuple(layers)


def make_monitor(executor: Executor, taps: FakeTaps, **kwargs: Any) -> DriftMonitor:
    kwargs.setdefault("half_life", 50.0)
    layers = kwargs.pop("layers", norm_layers())
    return DriftMonitor(layers, lambda: taps, executor, **kwargs)


def batches(rng: np.random.Generator, sizes: list[int], shift: float = 0.0) -> Iterator[Arrays]:
    for size in sizes:
        x = (
            MU[:, None, None]
            + shift
            + np.sqrt(S2)[:, None, None] * rng.standard_normal((size, C, H, W))
        )
        yield {"x": x.astype(np.float32)}


def expected_window(seen: list[npt.NDArray[np.generic]], half_life: float) -> dict[str, Any]:
    """Weighted float64 moments: weight 0.5 ** (samples in later batches / half_life)."""
    sizes = np.array([len(x) for x in seen], dtype=np.float64)
    after = np.concatenate([np.cumsum(sizes[::-1])[::-1][1:], [0.0]])
    w = np.repeat(0.5 ** (after / half_life), sizes.astype(int))
    out: dict[str, Any] = {"samples": w.sum(), "effective": w.sum() ** 2 / (w * w).sum()}
    for name, z in layer_inputs(np.concatenate(seen)).items():
        total = w.sum() * z.shape[2]
        mean = np.einsum("n,ncp->c", w, z) / total
        out[name] = (mean, np.einsum("n,ncp->c", w, (z - mean[:, None]) ** 2) / total)
    return out


def expected_scores(mean: F64, var: F64, mu: F64, s2: F64) -> dict[str, float]:
    d = (mean - mu) / np.sqrt(s2 + EPS)
    rho = (var + EPS) / (s2 + EPS)
    w2 = np.sqrt(d**2 + (np.sqrt(rho) - 1.0) ** 2)
    rms = lambda v: float(np.sqrt(np.mean(v**2)))  # noqa: E731
    return {"drift": rms(w2), "mean_shift": rms(d), "log_var_ratio": rms(np.log(rho))}


def assert_window_matches(snapshot: dict[str, Any], seen: list[Any], half_life: float) -> None:
    expected = expected_window(seen, half_life)
    stored = {layer.name: layer for layer in norm_layers()}
    assert [layer["name"] for layer in snapshot["layers"]] == ["conv", "fc"]
    for report in snapshot["layers"]:
        mean, var = expected[report["name"]]
        layer = stored[report["name"]]
        assert layer.running_mean is not None and layer.running_var is not None
        assert report["window_samples"] == pytest.approx(expected["samples"], rel=1e-9)
        np.testing.assert_allclose(report["per_channel"]["mean"], mean, rtol=1e-9)
        np.testing.assert_allclose(report["per_channel"]["var"], var, rtol=1e-9)
        scores = expected_scores(mean, var, layer.running_mean, layer.running_var)
        for key, value in scores.items():
            assert report[key] == pytest.approx(value, rel=1e-9)
        assert all(type(v) is float for v in report["per_channel"]["w2"])


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="drift") as executor:
        yield executor


def test_every_batch_window_equals_decayed_numpy_reference(pool: ThreadPoolExecutor) -> None:
    taps = FakeTaps()
    monitor = make_monitor(pool, taps, half_life=40.0, max_overhead=1.0)
    sizes = [7, 1, 30, 16, 3, 64, 9, 25]
    fed = list(batches(np.random.default_rng(0), sizes))
    for inputs in fed:
        monitor.observe(inputs, len(inputs["x"]), compute_seconds=1e-3)
    monitor.flush(10.0)
    assert [x is inputs["x"] for x, inputs in zip(taps.seen, fed, strict=True)] == [True] * 8
    snapshot = monitor.snapshot()
    assert snapshot["batches_seen"] == snapshot["batches_tapped"] == len(sizes)
    assert snapshot["samples_seen"] == snapshot["samples_tapped"] == sum(sizes)
    assert snapshot["baseline"] is None
    assert_window_matches(snapshot, taps.seen, 40.0)
    monitor.close()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    half_life=st.floats(0.5, 1e4),
    seed=st.integers(0, 2**16),
)
def test_window_matches_reference_for_any_batching(
    sizes: list[int], half_life: float, seed: int
) -> None:
    taps = FakeTaps()
    monitor = make_monitor(InlineExecutor(), taps, half_life=half_life, max_overhead=1.0)
    for inputs in batches(np.random.default_rng(seed), sizes):
        monitor.observe(inputs, len(inputs["x"]), compute_seconds=0.0)
    assert_window_matches(monitor.snapshot(), taps.seen, half_life)


def test_reset_empties_the_window_and_restarts_it(pool: ThreadPoolExecutor) -> None:
    taps = FakeTaps()
    monitor = make_monitor(pool, taps, max_overhead=1.0)
    rng = np.random.default_rng(1)
    for inputs in batches(rng, [5, 8]):
        monitor.observe(inputs, len(inputs["x"]), 1e-3)
    monitor.flush(10.0)
    monitor.reset()
    for report in monitor.snapshot()["layers"]:
        assert report["window_samples"] == 0.0
        assert report["drift"] is report["mean_shift"] is report["per_channel"] is None
        assert report["baseline"] is report["drift_ratio"] is None
    taps.seen.clear()
    for inputs in batches(rng, [4, 6]):
        monitor.observe(inputs, len(inputs["x"]), 1e-3)
    monitor.flush(10.0)
    assert_window_matches(monitor.snapshot(), taps.seen, 50.0)
    assert monitor.snapshot()["batches_tapped"] == 4  # counters belong to the version


def test_reset_drops_taps_of_batches_observed_before_it() -> None:
    executor = ManualExecutor()
    monitor = make_monitor(executor, FakeTaps(), max_overhead=1.0)
    inputs = next(batches(np.random.default_rng(2), [4]))
    monitor.observe(inputs, 4, 1e-3)
    monitor.reset()  # before the tap runs
    executor.run()
    taps = FakeTaps()
    running = make_monitor(InlineExecutor(), taps, max_overhead=1.0)
    taps.during = running.reset  # while the tap runs
    running.observe(inputs, 4, 1e-3)
    assert len(taps.seen) == 1
    for snapshot in (monitor.snapshot(), running.snapshot()):
        assert snapshot["batches_tapped"] == 0
        assert all(report["window_samples"] == 0.0 for report in snapshot["layers"])


@pytest.mark.parametrize("tap_cost", [1e-3, 4e-4])
def test_budget_skips_batches_and_never_exceeds_it(tap_cost: float) -> None:
    clock = FakeClock()
    taps = FakeTaps(clock, cost=tap_cost)
    monitor = make_monitor(InlineExecutor(), taps, max_overhead=0.1, clock=clock)
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 33, size=400).tolist()
    serve = 0.0
    last: float | None = None
    for inputs in batches(rng, sizes):
        size = len(inputs["x"])
        # Serving costs 1 ms per sample; the wall time since the previous batch (here: the
        # previous tap) counts instead when it is longer and not an idle gap (> 50 ms).
        gap = 0.0 if last is None else clock.now - last
        serve += max(1e-3 * size, gap if gap <= 0.05 else 0.0)
        last = clock.now
        monitor.observe(inputs, size, 1e-3 * size)
        assert monitor.tap_seconds_total <= 0.1 * serve + 1e-12
    snapshot = monitor.snapshot()
    assert monitor.serve_seconds_total == pytest.approx(serve, rel=1e-12)
    assert monitor.tap_seconds_total == pytest.approx(tap_cost * snapshot["samples_tapped"])
    assert snapshot["batches_seen"] == 400 and snapshot["samples_seen"] == sum(sizes)
    assert 0 < snapshot["batches_tapped"] < snapshot["batches_seen"]
    share = snapshot["samples_tapped"] * tap_cost / serve  # the budget is used, not wasted
    assert 0.08 < share <= 0.1
    assert_window_matches(snapshot, taps.seen, 50.0)  # the window holds the tapped batches


def test_at_most_one_tap_pending_and_every_batch_mode_queues_in_order() -> None:
    rng = np.random.default_rng(4)
    executor = ManualExecutor()
    monitor = make_monitor(executor, FakeTaps(), max_overhead=0.5)
    for inputs in batches(rng, [4] * 5):
        monitor.observe(inputs, 4, compute_seconds=1.0)  # budget allows a tap every batch
    assert len(executor.jobs) == 1
    executor.run()
    assert monitor.snapshot()["batches_tapped"] == 1

    executor = ManualExecutor()
    taps = FakeTaps()
    monitor = make_monitor(executor, taps, max_overhead=1.0)
    fed = list(batches(rng, [1, 2, 3, 4]))
    for inputs in fed:
        monitor.observe(inputs, len(inputs["x"]), compute_seconds=0.0)
    executor.run()  # one drain job empties the queue, in order
    assert executor.jobs == [] and [len(x) for x in taps.seen] == [1, 2, 3, 4]
    assert monitor.snapshot()["batches_tapped"] == 4


def test_observe_never_raises() -> None:
    taps = FakeTaps()
    taps.fail = True
    clock = FakeClock()  # stepped past each failure's backoff
    monitor = make_monitor(InlineExecutor(), taps, max_overhead=1.0, clock=clock)
    inputs = next(batches(np.random.default_rng(5), [3]))
    monitor.observe(inputs, 3, 1e-3)
    clock.now += 1000.0
    monitor.observe({"y": inputs["x"]}, 3, 1e-3)  # wrong input name: KeyError in the tap
    bad = {"x": np.full((2, C, H, W), np.nan, np.float32)}
    taps.fail = False
    clock.now += 1000.0
    monitor.observe(bad, 2, 1e-3)  # non-finite layer inputs are not merged
    assert monitor.errors == 3
    snapshot = monitor.snapshot()
    assert snapshot["batches_seen"] == 3 and snapshot["batches_tapped"] == 0
    assert all(report["drift"] is None for report in snapshot["layers"])

    calls = []

    def broken() -> FakeTaps:
        calls.append(1)
        raise OSError("model file vanished")

    executor = ManualExecutor()
    monitor = DriftMonitor(norm_layers(), broken, executor, 50.0, max_overhead=1.0)
    monitor.observe(inputs, 3, 1e-3)
    monitor.observe(inputs, 3, 1e-3)  # queued behind the first
    executor.run()
    monitor.observe(inputs, 3, 1e-3)  # within the backoff after the factory failed
    assert executor.jobs == [] and len(calls) == 1 and monitor.errors == 1

    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    monitor = make_monitor(pool, FakeTaps(), max_overhead=1.0)
    monitor.observe(inputs, 3, 1e-3)  # submit raises RuntimeError: counted, not raised
    assert monitor.errors == 1
    monitor.flush(1.0)  # nothing left pending


def test_close_stops_tapping_but_keeps_counting() -> None:
    taps = FakeTaps()
    monitor = make_monitor(InlineExecutor(), taps, max_overhead=1.0)
    inputs = next(batches(np.random.default_rng(10), [3]))
    monitor.observe(inputs, 3, 1e-3)
    monitor.close()
    monitor.observe(inputs, 3, 1e-3)
    snapshot = monitor.snapshot()
    assert len(taps.seen) == 1 and monitor.errors == 0
    assert (snapshot["batches_seen"], snapshot["batches_tapped"]) == (2, 1)
    assert_window_matches(snapshot, taps.seen, 50.0)


def gaussian_reference(rng: np.random.Generator, n: int, shift: float = 0.0) -> Arrays:
    return {"x": next(batches(rng, [n], shift))["x"]}


def test_bootstrap_draw_scores_equal_the_pooled_drawn_samples() -> None:
    rng = np.random.default_rng(6)
    x = gaussian_reference(rng, 20, shift=0.3)["x"]
    layer = norm_layers()[0]
    moments = FakeTaps().sample_moments({"x": x})["conv"]
    samples = ReferenceSamples.build(layer, moments)
    counts = rng.multinomial(7, np.full(20, 1 / 20), size=1).astype(np.float64)
    drawn = layer_inputs(np.repeat(x, counts[0].astype(int), axis=0))["conv"]
    mean, var = drawn.mean(axis=(0, 2)), drawn.var(axis=(0, 2))
    expected = expected_scores(mean, var, MU, S2)
    assert samples.scores(counts, 7) == pytest.approx(expected, rel=1e-9)


def test_baseline_interpolates_log_log_and_extends_with_slope_minus_half() -> None:
    sizes = np.array(SIZES, dtype=np.float64)
    values = 0.7 / np.sqrt(sizes) * (1.0 + 0.1 * np.cos(np.arange(len(sizes))))
    baseline = LayerBaseline(sizes, {"drift": values})
    assert baseline.at(8.0)["drift"] == pytest.approx(values[3], rel=1e-12)
    between = math.exp(0.5 * (math.log(values[3]) + math.log(values[4])))
    assert baseline.at(math.sqrt(8.0 * 16.0))["drift"] == pytest.approx(between, rel=1e-12)
    assert baseline.at(0.3)["drift"] == pytest.approx(values[0], rel=1e-12)
    assert baseline.at(4 * 2.0**16)["drift"] == pytest.approx(values[-1] / 2.0, rel=1e-12)


def test_bootstrap_baseline_falls_as_one_over_sqrt_n_whatever_the_chunking() -> None:
    reference = gaussian_reference(np.random.default_rng(7), 2048)
    sample = FakeTaps().sample_moments
    grid = compute_baseline(sample, norm_layers(), reference, chunk=64)
    again = compute_baseline(sample, norm_layers(), reference, chunk=1000)
    assert set(grid) == {"conv", "fc"}
    for name, baseline in grid.items():
        drift = baseline.scores["drift"]
        np.testing.assert_allclose(again[name].scores["drift"], drift, rtol=1e-9)
        slope = np.polyfit(np.log(SIZES[1:8]), np.log(drift[1:8]), 1)[0]  # n = 2 .. 128
        assert -0.6 < slope < -0.4, name
        assert np.all(np.diff(drift[:11]) < 0), name  # until n = 1024 nears N = 2048


def test_reference_traffic_stays_near_baseline_and_shift_rises_far_above(
    pool: ThreadPoolExecutor,
) -> None:
    rng = np.random.default_rng(7)
    reference = gaussian_reference(rng, 2048)
    kwargs: dict[str, Any] = {"half_life": 64.0, "max_overhead": 1.0, "reference": reference}
    clean = make_monitor(pool, FakeTaps(), **kwargs, reference_label="reference.npy")
    shifted = make_monitor(pool, FakeTaps(), **kwargs)
    ratios: dict[str, list[float]] = {"conv": [], "fc": []}
    for _ in range(6):  # a 3-channel score is noisy: average a few independent windows
        clean.reset()
        for inputs in batches(rng, [32] * 32):  # 16 half-lives: a steady-state window
            clean.observe(inputs, 32, 1e-3)
        clean.flush(20.0)
        for report in clean.snapshot()["layers"]:
            ratios[report["name"]].append(report["drift_ratio"])
    for inputs in batches(rng, [32] * 32, shift=0.5):
        shifted.observe(inputs, 32, 1e-3)
    shifted.flush(20.0)
    assert clean.snapshot()["baseline"] == "reference.npy (2048 samples)"
    assert all(0.6 < np.mean(values) < 1.5 for values in ratios.values()), ratios
    for report in shifted.snapshot()["layers"]:
        assert report["drift_ratio"] > 5.0, report["name"]
        assert set(report["baseline"]) == {"drift", "mean_shift", "log_var_ratio"}


def test_baseline_is_null_until_ready_and_without_reference() -> None:
    rng = np.random.default_rng(8)
    executor = ManualExecutor()
    reference = gaussian_reference(rng, 64)
    monitor = make_monitor(executor, FakeTaps(), max_overhead=1.0, reference=reference)
    inputs = next(batches(rng, [8]))
    monitor.observe(inputs, 8, compute_seconds=1.0)
    executor.run(1)  # the tap before the baseline job
    report = monitor.snapshot()["layers"][0]
    assert report["drift"] is not None and report["baseline"] is None
    assert report["drift_ratio"] is None
    executor.run()
    report = monitor.snapshot()["layers"][0]
    expected = compute_baseline(FakeTaps().sample_moments, norm_layers(), reference, 64)["conv"]
    assert report["baseline"] == pytest.approx(expected.at(8.0), rel=1e-12)  # one batch: n = 8
    assert report["drift_ratio"] == pytest.approx(report["drift"] / report["baseline"]["drift"])
    fed = [inputs["x"]]
    for more in batches(rng, [40, 40, 40]):
        monitor.observe(more, 40, compute_seconds=1.0)
        executor.run()
        fed.append(more["x"])
    window = expected_window(fed, 50.0)
    assert window["effective"] > 1.2 * window["samples"]  # decay: the sizes differ
    report = monitor.snapshot()["layers"][0]
    assert report["baseline"] == pytest.approx(expected.at(window["effective"]), rel=1e-9)

    monitor = make_monitor(InlineExecutor(), FakeTaps(), max_overhead=1.0)
    monitor.observe(inputs, 8, compute_seconds=1.0)
    snapshot = monitor.snapshot()
    assert snapshot["baseline"] is None
    for report in snapshot["layers"]:
        assert report["drift"] is not None
        assert report["baseline"] is report["drift_ratio"] is None


def test_collector_exports_snapshot_values_without_channel_labels(
    pool: ThreadPoolExecutor,
) -> None:
    rng = np.random.default_rng(9)
    layers = norm_layers(with_unused=True)
    with_ref = make_monitor(
        pool, FakeTaps(), layers=layers, max_overhead=1.0, reference=gaussian_reference(rng, 128)
    )
    without = make_monitor(pool, FakeTaps(), max_overhead=1.0)
    for inputs in batches(rng, [16, 16]):
        with_ref.observe(inputs, 16, compute_seconds=1.0)
        without.observe(inputs, 16, compute_seconds=1.0)
    with_ref.flush(10.0)
    without.flush(10.0)
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: [("digits", 2, with_ref), ("wine", 1, without)]))
    for model, version, monitor in (("digits", "2", with_ref), ("wine", "1", without)):
        for report in monitor.snapshot()["layers"]:
            labels = {"model": model, "version": version, "layer": report["name"]}
            value = registry.get_sample_value
            assert value("bnserve_bn_drift", labels) == report["drift"]
            assert value("bnserve_bn_drift_mean_shift", labels) == report["mean_shift"]
            assert value("bnserve_bn_drift_log_var_ratio", labels) == report["log_var_ratio"]
            assert value("bnserve_bn_drift_window_samples", labels) == report["window_samples"]
            base = report["baseline"]
            assert value("bnserve_bn_drift_baseline", labels) == (base and base["drift"])
    unused = {"model": "digits", "version": "2", "layer": "unused"}
    assert registry.get_sample_value("bnserve_bn_drift", unused) is None  # empty window
    assert registry.get_sample_value("bnserve_bn_drift_window_samples", unused) == 0.0
    wine = {"model": "wine", "version": "1", "layer": "conv"}
    assert registry.get_sample_value("bnserve_bn_drift_baseline", wine) is None  # no reference
    digits = {"model": "digits", "version": "2", "layer": "conv"}
    assert registry.get_sample_value("bnserve_bn_drift_baseline", digits) is not None
    for family in registry.collect():
        per_model = family.name == "bnserve_drift_errors"  # a counter of the serving version
        for sample in family.samples:
            assert set(sample.labels) == ({"model"} if per_model else {"model", "version", "layer"})
