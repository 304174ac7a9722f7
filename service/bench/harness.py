"""What the benchmark cases share in one suite run: a work folder, the load-generator process,
servers on private model repositories, the ResNet build, and load measurements with CPU use.
"""

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service.bench.cpu import CpuSnapshot
from service.bench.loadgen import Drive, LoadProcess, LoadResult, LoadSpec, run_blocking
from service.bench.models import ResNet18, build_resnet, export_resnet
from service.bench.rounds import Figures, Probe, Rounds
from service.bench.server import BenchServer, LeanServer, ServerProcess

WARMUP_SECONDS = 0.5
"""Load sent before each measured load, its responses not recorded."""
WARM_CONNECTIONS = 32
"""Connections of the load that warms a fresh server (``Bench.warm``)."""


@dataclass
class Measured:
    """A load run and the CPU that each side used, as fractions of one core."""

    result: LoadResult
    server_cpu: float
    client_cpu: float
    other_cpu: float
    """Cores used meanwhile by processes that are not part of the benchmark."""
    server_cpu_seconds: float = 0.0
    """The server process's CPU time over the whole load, warm-up included."""
    warmup_seconds: float = 0.0

    def figures(self) -> Figures:
        """The figures that rounds compare. CPU per request: the server's CPU over the whole
        load, prorated to the recorded window (warm-up requests cost the same)."""
        result = self.result
        failures = result.errors + sum(n for code, n in result.statuses.items() if code != 200)
        wall = result.wall_seconds or (result.seconds + self.warmup_seconds)
        recorded = self.server_cpu_seconds * min(1.0, result.seconds / wall)
        per_request = recorded / result.count * 1e3 if result.count else float("nan")
        p50, p99 = result.percentile_ms(50), result.percentile_ms(99)
        return Figures(p50, p99, result.rate, per_request, result.count, failures)

    def summary(self) -> str:
        other = sum(n for code, n in self.result.statuses.items() if code != 200)
        return (
            f"p50 {self.result.percentile_ms(50):.3g} ms, p99 {self.result.percentile_ms(99):.3g}"
            f" ms, {self.result.count} responses, {other} non-200, {self.result.errors} errors;"
            f" CPU: server {self.server_cpu:.0%}, load generator {self.client_cpu:.0%},"
            f" other processes {self.other_cpu:.0%}"
        )


@dataclass
class Bench:
    """Shared state of one suite run. ``quick`` shortens every measurement."""

    work: Path
    load: LoadProcess
    quick: bool = False
    image_size: int = 224
    log: Callable[[str], None] = print
    soak_minutes: float = 10.0
    digits_rounds: Rounds | None = None
    """bnserve vs the lean server on digits (``comparison.compare_digits``), once case a or b
    has run: measured once, read by a, b and the soak."""
    _resnet: tuple[ResNet18, Path] | None = field(default=None, repr=False)

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    @property
    def rounds(self) -> int:
        """Interleaved rounds of the cases that compare contenders (``rounds.interleave``)."""
        return 1 if self.quick else 3

    def resnet(self) -> tuple[ResNet18, Path]:
        """A fresh copy of the seeded ResNet module and its ONNX file (exported once)."""
        if self._resnet is None:
            self.log(f"exporting the ResNet-18 ({self.image_size}x{self.image_size}) to ONNX")
            module = build_resnet()
            path = self.work / "resnet18.onnx"
            export_resnet(module, self.image_size, path)
            self._resnet = (module, path)
        module, path = self._resnet
        return copy.deepcopy(module), path

    def _folder(self, name: str) -> Path:
        """A new folder ``name`` in the work folder (``name-2``... if a case is retried: cases
        a and b share a measurement that b runs again when a's failed)."""
        folder, attempt = self.work / name, 1
        while folder.exists():
            attempt += 1
            folder = self.work / f"{name}-{attempt}"
        folder.mkdir()
        return folder

    @contextmanager
    def server(
        self,
        name: str,
        write: Callable[[Path], Path],
        env: dict[str, str] | None = None,
        grpc: bool = False,
    ) -> Iterator[BenchServer]:
        """A server on a new repository that ``write(folder)`` fills, gRPC on if ``grpc``;
        stopped on exit."""
        folder = self._folder(name)
        models = write(folder / "models")
        self.log(f"[{name}] starting bnserve serve")
        with BenchServer(models, folder / "server.log", env, grpc=grpc) as server:
            self.log(f"[{name}] ready; idle after {server.settle_seconds:.1f} s of start-up work")
            yield server

    @contextmanager
    def lean(self, name: str, model: Path) -> Iterator[LeanServer]:
        """The lean baseline server (``service.bench.lean``) on ``model``; stopped on exit."""
        folder = self._folder(name)
        self.log(f"[{name}] starting the lean server")
        with LeanServer(model, folder / "server.log") as server:
            self.log(f"[{name}] ready; idle after {server.settle_seconds:.1f} s of start-up work")
            yield server

    def warm(
        self,
        server: ServerProcess,
        request: bytes,
        drive: Drive = run_blocking,
        port: int | None = None,
    ) -> None:
        """Load a fresh server before any measurement: sessions, arenas, code paths and the
        allocator reach their steady state (nothing recorded). ``port``: where ``drive``
        connects, if not the server's HTTP port (gRPC)."""
        seconds = self.seconds(2.0, 0.5)
        spec = LoadSpec(server.host, port or server.port, request, WARM_CONNECTIONS, 0.0, seconds)
        self.load.run(spec, drive)

    def probe(
        self,
        server: ServerProcess,
        request: bytes,
        connections: int,
        seconds: float,
        drive: Drive = run_blocking,
        port: int | None = None,
    ) -> Probe:
        """One measurement of ``measure``'s, as a round's probe (``rounds.interleave``)."""

        def probe() -> Figures:
            measured = self.measure(server, request, connections, seconds, drive, port)
            self.log(f"  {connections} conn: {measured.summary()}")
            return measured.figures()

        return probe

    def measure(
        self,
        server: ServerProcess,
        request: bytes,
        connections: int,
        seconds: float,
        drive: Drive = run_blocking,
        port: int | None = None,
    ) -> Measured:
        """Run ``connections`` closed-loop clients for ``seconds`` (after a warm-up), on
        ``port`` if given (gRPC), else the server's HTTP port."""
        spec = LoadSpec(
            server.host, port or server.port, request, connections, seconds, WARMUP_SECONDS
        )
        live = (server.pid, self.load.pid)
        cpu_before, start = server.cpu_seconds(), CpuSnapshot.take(live)
        result = self.load.run(spec, drive)
        end = CpuSnapshot.take(live)
        server_cpu = server.cpu_seconds() - cpu_before
        wall = result.wall_seconds or (seconds + WARMUP_SECONDS)
        others = end.others_since(start)
        return Measured(
            result,
            server_cpu / wall,
            result.cpu_seconds / wall,
            others,
            server_cpu,
            WARMUP_SECONDS,
        )
