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


def format_summary(sent: int, total: int, seconds: float) -> str:
    """The closing line: ``sent 2.0 MB in 0.5 s (4.0 MB/s)``, ``sent 0.3 of 2.0 MB ...`` if cut."""
    amount = _megabytes(sent) if sent >= total else f"{sent / MB:.1f} of {_megabytes(total)}"
    return f"sent {amount} in {seconds:.1f} s ({_rate(sent, seconds)})"


class ProgressBar:
    """Bytes sent of ``total``, on ``stream``: ``update`` often, then ``close`` or ``abandon``."""

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
        self._sent = 0
        self._drawn: tuple[float, int] | None = None  # (when, bytes) of the last frame
        self._line_open = False  # a frame is on screen without its newline
        self._width = 0  # of the longest frame: shorter ones are padded over its remains

    def update(self, sent: int) -> None:
        self._sent = sent
        if not self._interactive:
            return
        now = self._clock()
        if self._drawn is None or now - self._drawn[0] >= self._interval:
            self._draw(now)

    def close(self) -> None:
        now = self._clock()
        if not self._interactive:
            self._stream.write(format_summary(self._sent, self._total, now - self._started) + "\n")
        elif self._drawn is None or self._drawn[1] != self._sent:
            self._draw(now)
        self.abandon()

    def abandon(self) -> None:
        """End a drawn frame's line, so that what is written next starts on a line of its own."""
        if self._line_open:
            self._stream.write("\n")
            self._line_open = False
        self._stream.flush()

    def _draw(self, now: float) -> None:
        line = format_progress(self._sent, self._total, now - self._started)
        self._width = max(self._width, len(line))
        self._stream.write(f"\r{line.ljust(self._width)}")
        self._stream.flush()
        self._drawn = (now, self._sent)
        self._line_open = True
