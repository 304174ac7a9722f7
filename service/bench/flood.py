"""Case g: a flood of large JSON inference bodies, and the server's peak memory under it.

Each body is a V2 request for tens of thousands of digits samples, far over the model's
``max_batch_size``: a server that read and parsed such bodies whole before refusing the batch
grew by gigabytes (32 bodies of 53 MiB: +2.4 GiB peak RSS). Sent with a declared
``Content-Length`` and chunked, from one thread per connection, each stopping as soon as the
server answers.
"""

import collections
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.bench.server import BenchServer
from service.bench.upload import post_stream

PIECE = 256 * 1024
"""Bytes per send."""


def json_body(size: int, seed: int = 0) -> bytes:
    """A V2 JSON request of about ``size`` bytes: digits samples, one sample's text repeated."""
    pixels = np.random.default_rng(seed).uniform(0.0, 16.0, 64).astype(np.float32)
    sample = ", ".join(repr(float(value)) for value in pixels).encode() + b", "
    count = max(1, size // len(sample))
    head = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [%d, 1, 8, 8], "data": ['
    return head % count + (sample * count)[:-2] + b"]}]}"


def _pieces(body: bytes) -> Iterator[memoryview]:
    view = memoryview(body)
    for start in range(0, len(view), PIECE):
        yield view[start : start + PIECE]


def flood(
    host: str, port: int, path: str, body: bytes, connections: int, chunked: bool
) -> list[int]:
    """POST ``body`` on ``connections`` connections at once; their statuses (0: no answer)."""

    def send(_: int) -> int:
        length = None if chunked else len(body)
        try:
            return post_stream(host, port, path, _pieces(body), length, "application/json").status
        except ConnectionError:
            return 0

    with ThreadPoolExecutor(connections) as pool:
        return list(pool.map(send, range(connections)))


@dataclass(frozen=True)
class FloodResult:
    statuses: collections.Counter[int]
    rss_kb: int
    """The server's RSS before the flood."""
    peak_kb: int
    """Its peak RSS during the flood (an upper bound where the peak could not be reset)."""
    seconds: float

    @property
    def growth_mib(self) -> float:
        return (self.peak_kb - self.rss_kb) / 1024

    @property
    def refused(self) -> bool:
        """Every request got a 4xx or a 503."""
        return all(400 <= code < 500 or code == 503 for code in self.statuses)

    def summary(self) -> str:
        codes = ", ".join(f"{n} x {code}" for code, n in sorted(self.statuses.items()))
        return (
            f"statuses {codes} in {self.seconds:.1f} s; VmRSS before {self.rss_kb / 1024:.0f}"
            f" MiB, peak {self.peak_kb / 1024:.0f} MiB"
        )


def measure_flood(
    server: BenchServer, path: str, body: bytes, connections: int, chunked: bool
) -> FloodResult:
    """``flood`` against ``server``, with its RSS before and its peak RSS during the flood."""
    reset = server.reset_peak()
    before = server.memory_kb()
    started = time.perf_counter()
    statuses = flood(server.host, server.port, path, body, connections, chunked)
    seconds = time.perf_counter() - started
    peak = server.memory_kb()["VmHWM"]
    if not reset:  # the peak may be start-up's: growth is then overstated, never understated
        peak = max(peak, before["VmRSS"])
    return FloodResult(collections.Counter(statuses), before["VmRSS"], peak, seconds)
