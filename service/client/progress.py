"""An upload progress bar on stderr: plain text redrawn with ``\\r``, no dependency.

On a terminal the bar is redrawn at most every ``interval`` seconds; elsewhere (a log file, a
CI job) nothing is drawn during the upload and one summary line is written at the end.
Sizes are in decimal megabytes (1 MB = 10**6 bytes).
"""

import time
from collections.abc import Callable
from typing import TextIO

MB = 1_000_000


def _megabytes(count: int) -> str:
    return f"{count / MB:.1f} MB"


def _rate(sent: int, seconds: float) -> str:
    return f"{sent / MB / seconds:.1f} MB/s" if seconds > 0 else "-- MB/s"


def format_progress(sent: int, total: int, seconds: float, width: int = 30) -> str:
    """One bar: ``[#####.....]  50.0%  1.0/2.0 MB  4.0 MB/s`` (``sent`` of ``total`` bytes)."""
    fraction = min(1.0, sent / total) if total > 0 else 1.0
    filled = int(fraction * width)
    bar = "#" * filled + "." * (width - filled)
    amount = f"{sent / MB:.1f}/{_megabytes(total)}"
    return f"[{bar}] {fraction * 100:5.1f}%  {amount}  {_rate(sent, seconds)}"


def format_summary(sent: int, seconds: float) -> str:
    """The closing line: ``sent 2.0 MB in 0.5 s (4.0 MB/s)``."""
    return f"sent {_megabytes(sent)} in {seconds:.1f} s ({_rate(sent, seconds)})"


class ProgressBar:
    """Reports bytes sent of ``total`` on ``stream``; call ``update`` often, ``close`` once."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        interactive: bool,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._total = total
        self._stream = stream
        self._interactive = interactive
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None
        self._sent = 0

    def update(self, sent: int) -> None:
        self._sent = sent
        now = self._clock()
        if not self._interactive:
            return
        if self._drawn_at is not None and now - self._drawn_at < self._interval:
            return
        self._drawn_at = now
        self._draw(now)

    def close(self) -> None:
        now = self._clock()
        if self._interactive:
            self._draw(now)
            self._stream.write("\n")
        else:
            self._stream.write(format_summary(self._sent, now - self._started) + "\n")
        self._stream.flush()

    def _draw(self, now: float) -> None:
        line = format_progress(self._sent, self._total, now - self._started)
        self._stream.write(f"\r{line}")
        self._stream.flush()
