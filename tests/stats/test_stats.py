"""BatchNorm statistics maths against independent references: numpy float64 and torch."""

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.swa_utils import update_bn

from service.errors import InvalidInput
from service.stats import (
    GhostBatcher,
    Moments,
    Recalibration,
    apply_prior,
    make_estimator,
)

F64 = npt.NDArray[np.float64]
FAST = settings(max_examples=40, deadline=None)


def per_channel(x: npt.NDArray[np.generic], axis: int = 1) -> F64:
    """``x`` as (values, channels) in float64: the independent reference layout."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def assert_moments(m: Moments, values: F64, rtol: float = 1e-10) -> None:
    assert m.n == len(values)
    # The mean's error is judged in units of the spread (1e-6 of 1e4 would hide real bugs).
    atol = rtol * values.std(axis=0).max()
    np.testing.assert_allclose(m.mean, values.mean(axis=0), rtol=0, atol=atol)
    np.testing.assert_allclose(m.var_biased, values.var(axis=0, ddof=0), rtol=rtol)
    np.testing.assert_allclose(m.var_unbiased, values.var(axis=0, ddof=1), rtol=rtol)


# --- Moments ---------------------------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(2, 200),
    channels=st.integers(1, 4),
    loc_scale=st.sampled_from([(0.0, 1.0), (1e4, 1.0), (-100.0, 0.01), (3.0, 1e3)]),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_merge_of_any_partition_equals_whole(
    seed: int, rows: int, channels: int, loc_scale: tuple[float, float], cuts: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    loc, scale = loc_scale
    data = rng.normal(loc, scale, size=(rows, channels))
    bounds = [0, *sorted(c % (rows + 1) for c in cuts), rows]
    parts = [Moments.from_batch(data[a:b]) for a, b in itertools.pairwise(bounds)]
    left = Moments.empty(channels)
    for part in parts:
        left = left.merge(part)
    right = Moments.empty(channels)
    for part in reversed(parts):
        right = part.merge(right)
    assert_moments(left, data, rtol=1e-8)
    np.testing.assert_allclose(right.mean, left.mean, rtol=1e-13)
    np.testing.assert_allclose(right.m2, left.m2, rtol=1e-9)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((7, 3), 1), ((5, 3, 4, 2), 1), ((6, 2, 9), 1), ((4, 5, 3), -1), ((3, 4, 2, 2, 2), 1)],
)
def test_from_batch_reduces_all_axes_but_channels(shape: tuple[int, ...], axis: int) -> None:
    x = np.random.default_rng(0).normal(2.0, 3.0, size=shape)
    assert_moments(Moments.from_batch(x, axis_channel=axis), per_channel(x, axis))


@pytest.mark.parametrize("loc", [1e4, 1e6])
def test_from_batch_float32_with_huge_offset_is_centred(loc: float) -> None:
    x = np.random.default_rng(1).normal(loc, 1.0, size=(512, 3, 4, 4)).astype(np.float32)
    m = Moments.from_batch(x)
    assert m.mean.dtype == np.float64
    # A float32 sum of squares would lose every digit here; centring keeps ~1e-8.
    assert_moments(m, per_channel(x), rtol=1e-7)
    half = (x[:, :, :2] - np.float32(loc - 1e3)).astype(np.float16)  # float16 tops at 65504
    assert_moments(Moments.from_batch(half), per_channel(half), rtol=1e-7)


def test_from_batch_of_no_samples_is_empty_and_merge_identity() -> None:
    empty = Moments.from_batch(np.zeros((0, 3, 2), np.float32))
    assert empty.n == 0 and empty.channels == 3
    full = Moments.from_batch(np.arange(12.0).reshape(4, 3))
    assert empty.merge(full) == full and full.merge(empty) == full
    assert np.isnan(empty.var_biased).all() and np.isnan(empty.var_unbiased).all()
    one = Moments.from_batch(np.ones((1, 3)))
    assert np.isnan(one.var_unbiased).all() and (one.var_biased == 0).all()


def test_from_summary_round_trip_and_immutability() -> None:
    x = np.random.default_rng(2).normal(size=(9, 4, 3))
    m = Moments.from_batch(x)
    again = Moments.from_summary(m.n, m.mean, m.var_biased)
    np.testing.assert_allclose(again.m2, m.m2, rtol=1e-14)
    np.testing.assert_array_equal(again.mean, m.mean)
    with pytest.raises(ValueError, match="read-only"):
        m.mean[0] = 1.0
    with pytest.raises(ValueError, match="channels"):
        m.merge(Moments.empty(3))


def test_decayed_window_equals_weighted_moments() -> None:
    rng = np.random.default_rng(3)
    old, new = rng.normal(1.0, 2.0, (50, 3)), rng.normal(-1.0, 0.5, (20, 3))
    factor = 0.3
    m = Moments.from_batch(old).decayed(factor).merge(Moments.from_batch(new))
    values = np.concatenate([old, new])
    weights = np.concatenate([np.full(50, factor), np.ones(20)])
    mean = np.average(values, axis=0, weights=weights)
    assert m.n == pytest.approx(weights.sum())
    np.testing.assert_allclose(m.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(m.m2, (weights[:, None] * (values - mean) ** 2).sum(0), rtol=1e-12)
    with pytest.raises(ValueError):
        m.decayed(-1.0)


# --- GhostBatcher ------------------------------------------------------------------------


def batch_stream(
    stream: npt.NDArray[np.float32], batch_size: int, chunks: Sequence[int]
) -> tuple[list[npt.NDArray[np.generic]], npt.NDArray[np.generic] | None, GhostBatcher]:
    batcher = GhostBatcher(batch_size, stream.shape[1:], stream.dtype)
    batches, start = [], 0
    for size in [*chunks, len(stream)]:  # the last chunk takes whatever remains
        chunk = stream[start : start + size]
        start += len(chunk)
        batches.extend(batcher.push(chunk))
    return batches, batcher.finish(), batcher


@FAST
@given(
    rows=st.integers(0, 90),
    batch_size=st.integers(1, 16),
    chunks=st.lists(st.integers(0, 25), max_size=12),
)
def test_ghost_batches_do_not_depend_on_chunking(
    rows: int, batch_size: int, chunks: list[int]
) -> None:
    stream = np.random.default_rng(rows).normal(size=(rows, 2, 3)).astype(np.float32)
    batches, tail, batcher = batch_stream(stream, batch_size, chunks)
    full = rows // batch_size
    assert len(batches) == full
    for i, batch in enumerate(batches):  # held batches must not be overwritten later
        assert batch.dtype == np.float32
        np.testing.assert_array_equal(batch, stream[i * batch_size : (i + 1) * batch_size])
    report = batcher.report
    assert (report.full_batches, report.tail_samples) == (full, rows % batch_size)
    assert report.samples_received == rows
    if full == 0 and rows > 0:
        assert tail is not None and report.tail_used
        np.testing.assert_array_equal(tail, stream)
    else:
        assert tail is None and not report.tail_used
    assert report.samples_used == full * batch_size + (rows if report.tail_used else 0)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(5, (0, 5, True, 5)), (19, (2, 3, False, 16)), (16, (2, 0, False, 16)), (0, (0, 0, False, 0))],
)
def test_ghost_tail_policy(rows: int, expected: tuple[int, int, bool, int]) -> None:
    stream = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    _, tail, batcher = batch_stream(stream, 8, [1, 0, 3])
    r = batcher.report
    assert (r.full_batches, r.tail_samples, r.tail_used, r.samples_used) == expected
    assert (tail is not None) == r.tail_used
    assert r.batches == r.full_batches + int(r.tail_used)


def test_ghost_batcher_rejects_bad_input() -> None:
    batcher = GhostBatcher(4, (3,), np.float32)
    with pytest.raises(ValueError, match="shape"):
        batcher.push(np.zeros((2, 4), np.float32))
    batches = list(batcher.push(np.arange(15, dtype=np.float64).reshape(5, 3)))
    assert batches[0].dtype == np.float32 and len(batches) == 1
    batcher.finish()
    with pytest.raises(RuntimeError):
        batcher.push(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError):
        GhostBatcher(0, (3,), np.float32)


# --- estimators against torch -------------------------------------------------------------

BATCH_SHAPES = [
    (nn.BatchNorm1d, [(8, 3), (8, 3), (5, 3), (2, 3)]),
    (nn.BatchNorm1d, [(4, 3, 6), (4, 3, 6), (1, 3, 6)]),
    (nn.BatchNorm2d, [(4, 3, 5, 5), (4, 3, 5, 5), (3, 3, 5, 5)]),
]


def make_batches(shapes: list[tuple[int, ...]], dtype: type = np.float64) -> list[F64]:
    rng = np.random.default_rng(len(shapes))
    return [rng.normal(5.0, 2.0, size=s).astype(dtype) for s in shapes]


def run_estimator(mode: str, batches: list[F64], momentum: float | None = None) -> tuple[F64, F64]:
    source = np.linspace(-1, 1, 3), np.linspace(0.5, 2, 3)
    estimator = make_estimator(mode, *source, momentum=momentum)
    for batch in batches:
        estimator.update(Moments.from_batch(batch))
    return estimator.result()


@pytest.mark.parametrize(("bn", "shapes"), BATCH_SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cumulative_equals_update_bn(bn: type[nn.Module], shapes: list, dtype: type) -> None:
    batches = make_batches(shapes, dtype)
    model = nn.Sequential(bn(3)).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        update_bn([torch.from_numpy(b) for b in batches], model)
    mean, var = run_estimator("cumulative", batches)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    layer = model[0]
    np.testing.assert_allclose(mean, layer.running_mean.double().numpy(), rtol=rtol)
    np.testing.assert_allclose(var, layer.running_var.double().numpy(), rtol=rtol)


@pytest.mark.parametrize(("bn", "shapes"), BATCH_SHAPES)
def test_ema_equals_torch_train_mode_update(bn: type[nn.Module], shapes: list) -> None:
    batches, momentum = make_batches(shapes), 0.3
    layer = bn(3, momentum=momentum).double().train()
    layer.running_mean.copy_(torch.linspace(-1, 1, 3, dtype=torch.float64))
    layer.running_var.copy_(torch.linspace(0.5, 2, 3, dtype=torch.float64))
    with torch.no_grad():
        for batch in batches:
            layer(torch.from_numpy(batch))
    mean, var = run_estimator("ema", batches, momentum=momentum)
    np.testing.assert_allclose(mean, layer.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(var, layer.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize(("bn", "shapes"), BATCH_SHAPES)
def test_population_equals_numpy_over_all_values(bn: type[nn.Module], shapes: list) -> None:
    batches = make_batches(shapes)
    values = np.concatenate([per_channel(b) for b in batches])
    mean, var = run_estimator("population", batches)
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, values.var(axis=0, ddof=1), rtol=1e-12)


def test_apply_prior_formula() -> None:
    source = np.array([0.0, 1.0]), np.array([1.0, 4.0])
    target = np.array([2.0, 3.0]), np.array([3.0, 8.0])
    mean, var = apply_prior(source, target, prior=16, samples=48)  # weights 1/4, 3/4
    np.testing.assert_allclose(mean, [1.5, 2.5])
    np.testing.assert_allclose(var, [2.5, 7.0])
    np.testing.assert_array_equal(apply_prior(source, target, 0, 48)[1], target[1])
    with pytest.raises(InvalidInput):
        apply_prior(source, target, -1, 48)


def test_estimator_parameter_errors() -> None:
    source = np.zeros(2), np.ones(2)
    with pytest.raises(InvalidInput, match="mode"):
        make_estimator("median", *source)
    with pytest.raises(InvalidInput, match="momentum"):
        make_estimator("cumulative", *source, momentum=0.1)
    with pytest.raises(InvalidInput, match="momentum"):
        make_estimator("ema", *source, momentum=0.0)
    with pytest.raises(InvalidInput, match="prior"):
        Recalibration({"bn": source}, "ema", prior=8)
    estimator = make_estimator("ema", *source)  # default momentum 0.1, result starts at source
    np.testing.assert_array_equal(estimator.result()[1], source[1])
    with pytest.raises(InvalidInput, match="no batches"):
        make_estimator("cumulative", *source).result()


# --- Recalibration ---------------------------------------------------------------------------

SOURCES = {
    "a": (np.zeros(3), np.ones(3)),
    "b": (np.full(2, 4.0), np.full(2, 9.0)),
}


def two_layer_batches(seed: int, sizes: Sequence[int]) -> list[dict[str, F64]]:
    """Per batch, each layer's input: ``a`` is (N, 3), ``b`` is (N, 2, 4) (4 positions)."""
    rng = np.random.default_rng(seed)
    return [
        {"a": rng.normal(1.0, 2.0, (n, 3)), "b": rng.normal(-3.0, 0.5, (n, 2, 4))} for n in sizes
    ]


def recalibrate(mode: str, batches: list[dict[str, F64]], **kwargs: float) -> Recalibration:
    recal = Recalibration(SOURCES, mode, **kwargs)
    for batch in batches:
        recal.update({k: Moments.from_batch(v) for k, v in batch.items()}, len(batch["a"]))
    return recal


@pytest.mark.parametrize("mode", ["cumulative", "population", "ema"])
def test_recalibration_runs_one_estimator_per_layer(mode: str) -> None:
    batches = two_layer_batches(0, [8, 8, 8])
    recal = recalibrate(mode, batches)
    result = recal.result()
    assert list(result) == ["a", "b"] and (recal.samples, recal.batches) == (24, 3)
    for name, (mean, var) in result.items():
        estimator = make_estimator(mode, *SOURCES[name])
        for batch in batches:
            estimator.update(Moments.from_batch(batch[name]))
        np.testing.assert_array_equal(mean, estimator.result()[0])
        np.testing.assert_array_equal(var, estimator.result()[1])
        values = np.concatenate([per_channel(b[name]) for b in batches])
        assert_moments(recal.stream_moments[name], values)


def test_recalibration_prior_counts_samples_not_positions() -> None:
    batches = two_layer_batches(1, [8, 8])
    target = recalibrate("population", batches).result()
    mixed = recalibrate("population", batches, prior=48.0).result()
    for name in SOURCES:  # n = 16 samples, so the source weighs 48 / 64 (even for "b")
        for got, src, tgt in zip(mixed[name], SOURCES[name], target[name], strict=True):
            np.testing.assert_allclose(got, 0.75 * src + 0.25 * tgt, rtol=1e-12)


def test_recalibration_input_errors_name_the_layer() -> None:
    recal = Recalibration(SOURCES, "cumulative")
    with pytest.raises(InvalidInput, match="no samples"):
        recal.result()
    one = two_layer_batches(2, [1])[0]
    with pytest.raises(InvalidInput, match=r"layer 'a'.*2 samples"):
        recal.update({k: Moments.from_batch(v) for k, v in one.items()}, 1)
    bad = {"a": Moments.from_batch(np.full((4, 3), np.inf)), "b": Moments.empty(2)}
    with pytest.raises(InvalidInput, match="layer 'a': non-finite"):
        recal.update(bad, 4)
    with pytest.raises(ValueError, match="'b'"):
        recal.update({"a": Moments.from_batch(np.ones((4, 3)))}, 4)
    with pytest.raises(InvalidInput, match="layer 'a'"):
        recalibrate("population", two_layer_batches(3, [1])).result()


@FAST
@given(
    rows=st.integers(1, 60),
    chunks_a=st.lists(st.integers(0, 20), max_size=8),
    chunks_b=st.lists(st.integers(0, 20), max_size=8),
    mode=st.sampled_from(["cumulative", "population", "ema"]),
)
def test_recalibration_is_bit_identical_for_any_client_chunking(
    rows: int, chunks_a: list[int], chunks_b: list[int], mode: str
) -> None:
    stream = np.random.default_rng(rows).normal(2.0, 1.5, (rows, 3, 2)).astype(np.float32)
    results = []
    for chunks in (chunks_a, chunks_b):
        batches, tail, _ = batch_stream(stream, 7, chunks)
        recal = Recalibration({"a": SOURCES["a"]}, mode)
        for batch in [*batches, *([tail] if tail is not None else [])]:
            recal.update({"a": Moments.from_batch(batch)}, len(batch))
        results.append(recal.result()["a"])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
