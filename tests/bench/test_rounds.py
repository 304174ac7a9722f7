"""Interleaved rounds, medians, the a/b and soak rows: figures and verdicts from given numbers."""

import argparse
from array import array
from collections import Counter

import numpy as np
import pytest

from service.bench.__main__ import LETTERS, _minutes
from service.bench.comparison import (
    BARE,
    BATCHING_OFF,
    BNSERVE,
    BNSERVE_BINARY,
    FLOOR,
    LEAN,
    LEAN_FLOOR,
    THREAD_CALLS,
    contender,
    latency_rows,
    throughput_rows,
)
from service.bench.harness import Measured
from service.bench.loadgen import LoadResult
from service.bench.rounds import Figures, Rounds, interleave, median
from service.bench.soak import Soak, Window, soak_rows, window_seconds

NAN = float("nan")


def test_figures_of_calls_match_numpy_nearest_rank() -> None:
    rng = np.random.default_rng(0)
    calls = [int(v) for v in rng.permutation(np.arange(1, 201) * 1000)]
    figures = Figures.of_calls(calls)
    ns = np.asarray(calls, dtype=np.float64)
    assert figures.p50_ms == np.percentile(ns, 50, method="inverted_cdf") / 1e6
    assert figures.p99_ms == np.percentile(ns, 99, method="inverted_cdf") / 1e6
    assert figures.rate == pytest.approx(len(calls) / (ns.sum() / 1e9))
    assert figures.responses == 200 and np.isnan(figures.cpu_ms_per_request)


def test_median_takes_each_figure_apart_and_skips_nan() -> None:
    measured = [
        Figures(1.0, 9.0, 300.0, NAN, 10, 0),
        Figures(3.0, 7.0, 100.0, 0.5, 20, 1),
        Figures(2.0, 8.0, 200.0, 0.7, 30, 0),
    ]
    middle = median(measured)
    assert (middle.p50_ms, middle.p99_ms, middle.rate) == (2.0, 8.0, 200.0)
    assert middle.cpu_ms_per_request == pytest.approx(np.median([0.5, 0.7]))
    assert (middle.responses, middle.failures) == (60, 1)
    assert np.isnan(median([Figures(1.0, 1.0, 1.0)]).cpu_ms_per_request)


def test_interleave_runs_every_probe_once_a_round_and_alternates_the_order() -> None:
    calls: list[str] = []

    def probe(name: str, value: float) -> Figures:
        calls.append(name)
        return Figures(value, value, value)

    probes = {name: (lambda n=name: probe(n, len(calls))) for name in ("x", "y", "z")}
    rounds = interleave(probes, 3, log=lambda _: None)
    assert calls == ["x", "y", "z", "z", "y", "x", "x", "y", "z"]
    assert [f.p50_ms for f in rounds.measured["x"]] == [0, 5, 6]
    assert rounds.median("x").p50_ms == 5
    assert rounds.spread("z", lambda f: f.p50_ms) == "2 / 3 / 8"


def test_measured_figures_count_failures_and_prorate_server_cpu() -> None:
    result = LoadResult(seconds=4.0, latencies_ns=array("q", [1_000_000] * 90 + [3_000_000] * 10))
    result.statuses = Counter({200: 95, 503: 5})
    result.errors, result.wall_seconds = 2, 5.0
    figures = Measured(result, 0.0, 0.0, 0.0, server_cpu_seconds=2.5).figures()
    assert figures.failures == 7 and figures.responses == 100
    assert figures.rate == pytest.approx(100 / 4.0)
    # 2.5 s of server CPU over 5 s, 4 of them recorded: 2.0 s for 100 responses.
    assert figures.cpu_ms_per_request == pytest.approx(2.0 / 100 * 1e3)
    assert figures.p50_ms == 1.0 and figures.p99_ms == 3.0


def _digits_rounds(scale: dict[str, float]) -> Rounds:
    """Three rounds per contender; round values = base * (0.9, 1.0, 1.3) (median 1.0x)."""
    names = [contender(BNSERVE, 1), contender(LEAN, 1), contender(BNSERVE, 32)]
    names += [contender(LEAN, 32), BARE, contender(BNSERVE_BINARY, 1)]
    names += [contender(FLOOR, 1), contender(LEAN_FLOOR, 1), contender(BATCHING_OFF, 1)]
    names += [contender(THREAD_CALLS, 1), contender(THREAD_CALLS, 32)]
    measured = {}
    for name in names:
        base = scale.get(name, 1.0)
        measured[name] = [
            Figures(base * k, 10 * base * k, 1000 / (base * k), base * k / 10)
            for k in (0.9, 1.3, 1.0)
        ]
    return Rounds(measured)


def test_latency_and_throughput_rows_are_median_ratios_with_the_issue_targets() -> None:
    bnserve1, bnserve32 = contender(BNSERVE, 1), contender(BNSERVE, 32)
    # bnserve 0.8x the lean server's time at 1 connection (p50 met), 1.25x its time at 32
    # (req/s 0.8x and p99 1.25x: both missed).
    threaded32 = contender(THREAD_CALLS, 32)
    rounds = _digits_rounds({bnserve1: 0.8, bnserve32: 1.25, BARE: 0.1, threaded32: 2.5})
    a = {row.metric: row for row in latency_rows(rounds)}
    b = {row.metric: row for row in throughput_rows(rounds)}
    assert all(row.case == "a" for row in a.values()) and len(a) == 11
    assert all(row.case == "b" for row in b.values()) and len(b) == 8

    p50 = a["digits p50, 1 conn, JSON"]
    assert p50.ratio == pytest.approx(0.8) and p50.met is True
    assert str(p50.target) == "<= 0.9x" and p50.baseline_label == "lean server"
    assert p50.value == pytest.approx(np.median([0.8 * k for k in (0.9, 1.3, 1.0)]))
    assert "0.72 / 1.04 / 0.8 vs 0.9 / 1.3 / 1" in p50.note
    assert a["digits p50, 1 conn, JSON, over bare compute"].ratio == pytest.approx(8.0)
    assert a["digits req/s, 1 conn, JSON, batching on vs off"].ratio == pytest.approx(1.25)
    assert a["digits req/s, 1 conn, JSON, batching on vs off"].met is True

    rate = b["digits req/s, 32 conn, JSON"]
    assert rate.ratio == pytest.approx(0.8) and rate.met is False and str(rate.target) == ">= 1.1x"
    tail = b["digits p99, 32 conn, JSON"]
    assert tail.value == pytest.approx(12.5) and tail.baseline == pytest.approx(10.0)
    assert tail.met is False and str(tail.target) == "<= 1.2x"
    cpu = b["digits server CPU per request, 32 conn, JSON"]
    assert cpu.ratio == pytest.approx(1.25) and cpu.target is None
    assert b["digits req/s, 32 conn, JSON, over bare 1-sample runs/s"].ratio == pytest.approx(0.08)
    # The other path of the inline rule: every call on the model's thread.
    assert a["digits p50, 1 conn, JSON, calls inline vs on the thread"].ratio == pytest.approx(0.8)
    inline = b["digits req/s, 32 conn, JSON, calls inline vs on the thread"]
    assert inline.ratio == pytest.approx(2.0) and inline.target is None
    threaded = b["digits req/s, 32 conn, JSON, calls on the thread, vs lean server"]
    assert threaded.ratio == pytest.approx(0.4)


def _window(p99: float, responses: int, failures: int, rss: tuple[float, ...]) -> Window:
    return Window(p99, responses, failures, 10.0, rss)


def test_soak_growth_is_last_window_median_minus_second() -> None:
    windows = (
        _window(5.0, 100, 0, (100.0, 150.0)),
        _window(9.0, 110, 0, (200.0, 204.0, 202.0)),
        _window(7.0, 120, 0, (210.0, 230.0, 220.0)),
    )
    result = Soak(windows)
    assert result.growth_mib == pytest.approx(
        np.median([210, 230, 220]) - np.median([200, 204, 202])
    )
    assert result.worst_p99_ms == 9.0 and result.responses == 330 and result.failures == 0
    rows = soak_rows(result, 0.5, None)
    growth, tail, responses, failures = rows
    assert growth.value == pytest.approx(18.0) and growth.met is False  # over 16 MiB
    assert tail.baseline is None and tail.ratio is None
    assert responses.value == 330 and failures.value == 0 and failures.met is True


def test_soak_tail_is_compared_with_the_lean_server_at_32_connections() -> None:
    result = Soak((_window(5.0, 1, 0, (1.0,)), _window(30.0, 1, 1, (1.0,))))
    rounds = _digits_rounds({})  # the lean server's p99 at 32 connections: median 10 ms
    growth, tail, _, failures = soak_rows(result, 10, rounds)
    assert growth.value == 0.0 and growth.met is True
    assert tail.ratio == pytest.approx(3.0) and tail.baseline_label == "lean server p99"
    assert failures.value == 1 and failures.met is False


def test_soak_windows_are_minutes_or_thirds_of_a_short_soak() -> None:
    assert window_seconds(10) == 60.0
    assert window_seconds(0.5) == pytest.approx(10.0)


def test_soak_minutes_option() -> None:
    assert "j" in LETTERS
    assert _minutes("2.5") == 2.5
    for bad in ("0", "-1", "nan", "ten"):
        with pytest.raises(argparse.ArgumentTypeError):
            _minutes(bad)
