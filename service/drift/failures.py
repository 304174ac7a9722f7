"""The failures of a drift monitor's background work, and the backoff they put on tapping.

A failed tap (the tapped forward could not be created, raised, or gave non-finite moments) is
counted, its message kept, and tapping pauses: after ``k`` failures in a row no batch is tapped
for ``min(first_delay * 2**(k - 1), max_delay)`` seconds of the monitor's clock, then the next
eligible batch is tried again. A successful tap ends the run of failures. The pause bounds what
a persistent failure costs (creating the tapped forward loads the model again) without giving
up on a transient one for good.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

_MESSAGE_CHARS = 500  # an onnxruntime error can be pages long; the JSON keeps the head


@dataclass
class TapFailures:
    """Not thread-safe: the monitor calls it under its own lock."""

    first_delay: float = 1.0
    max_delay: float = 300.0
    count: int = 0
    delay: float = 0.0  # the current pause; 0 after a success
    retry_at: float = float("-inf")  # clock time before which no batch is tapped
    last_error: str | None = None
    last_error_at: str | None = None  # ISO 8601, UTC, wall time

    def failed(self, where: str, error: BaseException, now: float) -> int:
        """Count ``error`` (raised at ``now``) and pause tapping; the count so far."""
        self.count += 1
        self.delay = min(max(2.0 * self.delay, self.first_delay), self.max_delay)
        self.retry_at = now + self.delay
        self.last_error = f"{where}: {type(error).__name__}: {error}"[:_MESSAGE_CHARS]
        self.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")
        return self.count

    def succeeded(self) -> None:
        self.delay = 0.0

    def paused(self, now: float) -> bool:
        return now < self.retry_at
