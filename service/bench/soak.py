"""Case j: bnserve under steady load for minutes; does its memory stay flat, does its tail hold?

The load is the digits JSON body on 32 connections, run as back-to-back windows of a minute
each (the load generator reports per run, so a window is a run; the reconnect between two
costs milliseconds). The server's RSS is sampled every ``RSS_INTERVAL`` seconds on a thread.
Growth is the last window's median RSS minus the second's: the first holds the allocator's
and caches' climb to their steady state, which is not a leak.
"""

import statistics
import time
from dataclasses import dataclass

from service.bench.comparison import LEAN, LEAN_LABEL, contender
from service.bench.harness import Bench
from service.bench.loadgen import LoadResult, LoadSpec
from service.bench.report import Row, Target
from service.bench.rounds import Rounds
from service.bench.server import RssSampler, ServerProcess

RSS_INTERVAL = 5.0
CONNECTIONS = 32
FLAT = Target("<=", 16, "MiB")
"""RSS growth over the soak that still counts as flat."""
NO_FAILURES = Target("<=", 0)


def window_seconds(minutes: float) -> float:
    """A minute; shorter soaks (``--quick``) are cut in three windows, growth needs two."""
    return 60.0 if minutes >= 3 else minutes * 60.0 / 3


@dataclass(frozen=True)
class Window:
    """One window of the soak: what the clients saw, and the RSS samples taken meanwhile."""

    p99_ms: float
    responses: int
    failures: int
    """Non-200 responses and connection errors."""
    seconds: float
    rss_mib: tuple[float, ...]

    @classmethod
    def of(cls, result: LoadResult, rss_mib: tuple[float, ...]) -> "Window":
        failures = result.errors + sum(n for code, n in result.statuses.items() if code != 200)
        return cls(result.percentile_ms(99), result.count, failures, result.seconds, rss_mib)

    @property
    def median_rss_mib(self) -> float:
        return statistics.median(self.rss_mib) if self.rss_mib else float("nan")


@dataclass(frozen=True)
class Soak:
    windows: tuple[Window, ...]

    @property
    def growth_mib(self) -> float:
        """The last window's median RSS minus the second window's."""
        return self.windows[-1].median_rss_mib - self.windows[1].median_rss_mib

    @property
    def worst_p99_ms(self) -> float:
        return max(window.p99_ms for window in self.windows)

    @property
    def responses(self) -> int:
        return sum(window.responses for window in self.windows)

    @property
    def failures(self) -> int:
        return sum(window.failures for window in self.windows)


def soak(
    bench: Bench,
    server: ServerProcess,
    request: bytes,
    minutes: float,
    rss_interval: float = RSS_INTERVAL,
) -> Soak:
    """``minutes`` of ``request`` on ``CONNECTIONS`` connections, in windows."""
    seconds = window_seconds(minutes)
    count = max(2, round(minutes * 60.0 / seconds))
    spec = LoadSpec(server.host, server.port, request, CONNECTIONS, seconds)
    sampler = RssSampler(server, rss_interval)
    spans = []
    try:
        for index in range(count):
            start = time.perf_counter()
            result = bench.load.run(spec)
            spans.append((result, start, time.perf_counter()))
            bench.log(
                f"[j] window {index + 1} of {count}: {result.count} responses, "
                f"p99 {result.percentile_ms(99):.3g} ms"
            )
    finally:
        sampler.stop()
    return Soak(tuple(Window.of(r, sampler.between(start, end)) for r, start, end in spans))


def soak_rows(result: Soak, minutes: float, digits: Rounds | None) -> list[Row]:
    """The soak's rows; its worst p99 over the lean server's median p99 at 32 connections
    when ``digits`` (cases a/b's rounds) were measured in this run."""
    windows = result.windows
    length = f"{minutes:g} min"
    rss = ", ".join(f"{w.median_rss_mib:.0f}" for w in windows)
    p99s = ", ".join(f"{w.p99_ms:.3g}" for w in windows)
    rates = ", ".join(f"{w.responses / w.seconds:,.0f}" for w in windows)
    seconds = sum(w.seconds for w in windows)
    baseline, label = None, ""
    if digits is not None:
        baseline, label = digits.median(contender(LEAN, CONNECTIONS)).p99_ms, f"{LEAN_LABEL} p99"
    prefix = f"soak, digits JSON, {CONNECTIONS} conn, {length}:"
    return [
        Row("j", f"{prefix} RSS growth (last window's median - second's)", result.growth_mib,
            "MiB", None, "", FLAT, f"median VmRSS per {seconds / len(windows):.0f} s window, "
            f"MiB: {rss}"),
        Row("j", f"{prefix} worst per-window p99", result.worst_p99_ms, "ms", baseline, label,
            None, f"p99 per window, ms: {p99s}"),
        Row("j", f"{prefix} responses", result.responses, "responses", None, "", None,
            f"req/s per window: {rates}"),
        Row("j", f"{prefix} non-200 responses and connection errors", result.failures,
            "failures", None, "", NO_FAILURES),
    ]  # fmt: skip
