"""The tap budget of a drift monitor: the share of serving time that taps may take.

A batch may be tapped when ``tap_seconds + estimate <= max_overhead * serve_seconds``, where
``serve_seconds`` is the serving time observed so far (``served``) and ``estimate`` is the
batch size times the last measured tap time per sample (before any tap, the batch's own
serving time: a tapped forward costs at least a forward). Model loads and the baseline are
one-off costs, kept out of the budget. ``max_overhead >= 1`` lifts it: every batch is tapped.
"""

from dataclasses import dataclass

_IDLE_GAP = 0.05
"""Seconds between batches beyond which the server counts as idle (no budget earned)."""


@dataclass
class TapBudget:
    """Not thread-safe: the monitor calls it under its own lock."""

    max_overhead: float
    serve_seconds: float = 0.0
    tap_seconds: float = 0.0
    _last_observed: float | None = None
    _tap_per_sample: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.max_overhead >= 1.0

    def served(self, now: float, compute_seconds: float) -> None:
        """Account a batch served at ``now``. It stands for its compute, or the wall time since
        the last batch while traffic flows (gaps over ``_IDLE_GAP`` are idle), whichever is
        larger. Under load the wall time is what throughput is measured against; for a tiny
        model whose compute is a sliver of each request, compute alone would starve the taps."""
        last, self._last_observed = self._last_observed, now
        gap = 0.0 if last is None else now - last
        self.serve_seconds += max(compute_seconds, gap if gap <= _IDLE_GAP else 0.0)

    def allows(self, batch_size: int, compute_seconds: float) -> bool:
        """Whether a tap of this batch (served in ``compute_seconds``) fits the budget."""
        per_sample = self._tap_per_sample
        if per_sample is None:
            per_sample = compute_seconds / max(batch_size, 1)
        estimate = per_sample * batch_size
        return self.tap_seconds + estimate <= self.max_overhead * self.serve_seconds

    def tapped(self, seconds: float, batch_size: int) -> None:
        """Account a tap of ``batch_size`` samples that took ``seconds``."""
        self.tap_seconds += seconds
        self._tap_per_sample = seconds / max(batch_size, 1)
