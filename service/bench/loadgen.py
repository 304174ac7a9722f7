"""A closed-loop HTTP/1.1 load generator that costs far less CPU than the server it drives.

``connections`` keep-alive connections each send one pre-encoded request, read its response,
and send the next, until ``duration`` seconds have passed (closed loop: the offered load is what
the server sustains). The client does only what HTTP needs: it writes fixed bytes, reads the
status line and headers up to the blank line, takes ``Content-Length`` and reads that many body
bytes. No header dict, no URL parsing, no body decoding; uvloop when installed. A request is
timed from the write to the last body byte (``perf_counter_ns``).

``LoadProcess`` runs the load in a separate (spawned) process, so that the benchmark driver's
own work (baseline computations, numpy) never shares a GIL with the client, and reports the CPU
time that process used, which the benchmark prints next to the figures.
"""

import asyncio
import multiprocessing
import os
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

_HEADER_END = b"\r\n\r\n"


def encode_request(
    path: str,
    body: bytes | None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    """One complete HTTP/1.1 keep-alive request as bytes: a POST of ``body``, or a GET if None."""
    lines = [f"{'GET' if body is None else 'POST'} {path} HTTP/1.1", f"Host: {host}"]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    request: bytes
    """A complete request, sent as is, again and again (``encode_request``)."""
    connections: int
    duration: float
    """Seconds of load per connection, warm-up excluded."""
    warmup: float = 0.0
    """Seconds of load sent first whose responses are not recorded."""


@dataclass
class LoadResult:
    """What the clients saw. ``latencies_ns`` are per response, in completion order."""

    seconds: float
    latencies_ns: "array[int]" = field(default_factory=lambda: array("q"))
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    """Connection-level failures (reset, short read); each ends that connection's loop."""
    cpu_seconds: float = 0.0
    """User + system CPU time of the load generator, warm-up included (0 unless measured)."""
    wall_seconds: float = 0.0
    """Wall time over which ``cpu_seconds`` was measured."""

    @property
    def count(self) -> int:
        return len(self.latencies_ns)

    @property
    def rate(self) -> float:
        """Responses per second of wall time."""
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile latency in ms (nearest rank); NaN without responses."""
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        rank = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered)) - 1))
        return float(ordered[rank]) / 1e6


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status code. Bodies must carry Content-Length."""
    head = await reader.readuntil(_HEADER_END)
    status = int(head[9:12])
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        raise ConnectionError(f"response without Content-Length: {head[:200]!r}")
    end = head.index(b"\r\n", start + 2)
    length = int(head[start + 17 : end])
    if length:
        await reader.readexactly(length)
    return status


async def _connection(spec: LoadSpec, record_from: int, stop: int, result: LoadResult) -> None:
    try:
        reader, writer = await asyncio.open_connection(spec.host, spec.port)
    except OSError:
        result.errors += 1
        return
    clock = time.perf_counter_ns
    latencies, statuses = result.latencies_ns, result.statuses
    try:
        while True:
            start = clock()
            if start >= stop:
                break
            writer.write(spec.request)
            status = await _read_response(reader)
            if start >= record_from:
                latencies.append(clock() - start)
                statuses[status] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, ConnectionError):
        result.errors += 1
    finally:
        writer.close()


async def run_load(spec: LoadSpec) -> LoadResult:
    """Drive the server as ``spec`` says, on the running event loop."""
    now = time.perf_counter_ns()
    record_from = now + int(spec.warmup * 1e9)
    stop = record_from + int(spec.duration * 1e9)
    result = LoadResult(seconds=spec.duration)
    tasks = [_connection(spec, record_from, stop, result) for _ in range(spec.connections)]
    await asyncio.gather(*tasks)
    # A request sent just before ``stop`` completes after it: count the real recording window.
    result.seconds = max(spec.duration, (time.perf_counter_ns() - record_from) / 1e9)
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_on_fresh_loop(
    load: Callable[[LoadSpec], Coroutine[Any, Any, LoadResult]], spec: LoadSpec
) -> LoadResult:
    """``load(spec)`` on a fresh event loop (uvloop if installed), with its CPU time measured:
    the one place that picks the load generators' loop."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        before, start = _cpu_seconds(), time.perf_counter()
        result = runner.run(load(spec))
        result.cpu_seconds = _cpu_seconds() - before
        result.wall_seconds = time.perf_counter() - start
    return result


def run_blocking(spec: LoadSpec) -> LoadResult:
    """``run_load`` on a fresh event loop (``run_on_fresh_loop``)."""
    return run_on_fresh_loop(run_load, spec)


Drive = Callable[[LoadSpec], LoadResult]
"""A load generator: runs ``spec`` to the end, in the load process, and reports what it saw.

``run_blocking`` drives HTTP/1.1. A generator for another protocol (gRPC) is a sibling module
with its own module-level (picklable) ``Drive`` that sends ``spec.request`` as its own
pre-encoded request; ``LoadProcess.run`` and ``Bench.measure`` take it as ``drive``.
"""


class LoadProcess:
    """A spawned worker process that runs loads one at a time (``run``); a context manager.

    Spawned, not forked: the driver may hold torch and onnxruntime thread pools, which a fork
    would copy in an undefined state.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        # Pay the spawn and the imports before any timing; keep the pid for CPU accounting.
        self.pid = self._pool.submit(os.getpid).result()

    def run(self, spec: LoadSpec, drive: Drive = run_blocking) -> LoadResult:
        return self._pool.submit(drive, spec).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "LoadProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
