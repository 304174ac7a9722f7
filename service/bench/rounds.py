"""Interleaved rounds: every contender measured once per round, the table gets the medians.

On a shared machine the noise between two runs of the same server (±5% seen between rounds)
is as large as the differences the suite is asked to show. Measuring contenders one after the
other in each round, the order reversed every other round, spreads slow phases of the machine
over all of them; the median over rounds then drops a disturbed round instead of averaging it
in.
"""

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from service.bench.report import Row, Target

NAN = float("nan")


@dataclass(frozen=True)
class Figures:
    """What one measurement of a contender gave; NaN where its source has no such figure
    (bare onnxruntime has no server CPU)."""

    p50_ms: float
    p99_ms: float
    rate: float
    """Responses (or calls) per second."""
    cpu_ms_per_request: float = NAN
    """Server process CPU time over responses."""
    responses: int = 0
    failures: int = 0
    """Non-200 responses and connection errors."""

    @classmethod
    def of_calls(cls, latencies_ns: Sequence[int]) -> "Figures":
        """Sequential calls (bare onnxruntime): percentiles as the load generator's
        (nearest rank), rate = calls over the time spent in them."""
        ordered = sorted(latencies_ns)

        def percentile(q: float) -> float:
            rank = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered)) - 1))
            return ordered[rank] / 1e6

        rate = len(ordered) / (sum(ordered) / 1e9)
        return cls(percentile(50), percentile(99), rate, responses=len(ordered))


def median(measured: Sequence[Figures]) -> Figures:
    """The median of each figure over ``measured`` (NaN-free ones); counts are summed."""

    def middle(values: list[float]) -> float:
        finite = [value for value in values if not math.isnan(value)]
        return statistics.median(finite) if finite else NAN

    return Figures(
        middle([m.p50_ms for m in measured]),
        middle([m.p99_ms for m in measured]),
        middle([m.rate for m in measured]),
        middle([m.cpu_ms_per_request for m in measured]),
        sum(m.responses for m in measured),
        sum(m.failures for m in measured),
    )


Probe = Callable[[], Figures]
"""One measurement of one contender (a load on a server, or bare calls)."""
Stat = Callable[[Figures], float]
"""One figure of a ``Figures`` (``lambda f: f.p99_ms``)."""


@dataclass(frozen=True)
class Rounds:
    """Every contender's figures, one per round, in round order."""

    measured: Mapping[str, Sequence[Figures]]

    def median(self, name: str) -> Figures:
        return median(self.measured[name])

    def spread(self, name: str, stat: Stat) -> str:
        """``stat`` of each round, ``a / b / c``: how far apart the rounds were."""

        def number(value: float) -> str:
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"

        return " / ".join(number(stat(m)) for m in self.measured[name])

    def row(
        self,
        case: str,
        metric: str,
        stat: Stat,
        unit: str,
        pair: tuple[str, str, str],
        target: Target | None = None,
    ) -> Row:
        """``stat`` of the contender ``pair[0]`` over that of ``pair[1]`` (labelled
        ``pair[2]``), medians over rounds; the note gives each round's figures."""
        served, baseline, label = pair
        count = len(self.measured[served])
        note = (
            f"median of {count} interleaved round{'s' if count > 1 else ''}; rounds: "
            f"{self.spread(served, stat)} vs {self.spread(baseline, stat)}"
        )
        value, reference = stat(self.median(served)), stat(self.median(baseline))
        return Row(case, metric, value, unit, reference, label, target, note)


def p50(figures: Figures) -> float:
    return figures.p50_ms


def p99(figures: Figures) -> float:
    return figures.p99_ms


def rate(figures: Figures) -> float:
    return figures.rate


def cpu(figures: Figures) -> float:
    return figures.cpu_ms_per_request


def interleave(
    probes: Mapping[str, Probe], rounds: int, log: Callable[[str], None] = print
) -> Rounds:
    """Run every probe once per round, ``rounds`` times, reversing the order every other
    round (so no contender always runs first, after an idle pause, or last)."""
    measured: dict[str, list[Figures]] = {name: [] for name in probes}
    names = list(probes)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            log(f"round {index + 1} of {rounds}: {name}")
            measured[name].append(probes[name]())
    return Rounds(measured)
