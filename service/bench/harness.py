"""What the benchmark cases share in one suite run: a work folder, the load-generator process,
servers on private model repositories, the ResNet build, and load measurements with CPU use.
"""

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service.bench.cpu import CpuSnapshot
from service.bench.loadgen import LoadProcess, LoadResult, LoadSpec
from service.bench.models import ResNet18, build_resnet, export_resnet
from service.bench.server import BenchServer

WARMUP_SECONDS = 0.5
"""Load sent before each measured load, its responses not recorded."""


@dataclass
class Measured:
    """A load run and the CPU that each side used, as fractions of one core."""

    result: LoadResult
    server_cpu: float
    client_cpu: float
    other_cpu: float
    """Cores used meanwhile by processes that are not part of the benchmark."""

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
    _resnet: tuple[ResNet18, Path] | None = field(default=None, repr=False)

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

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

    @contextmanager
    def server(
        self, name: str, write: Callable[[Path], Path], env: dict[str, str] | None = None
    ) -> Iterator[BenchServer]:
        """A server on a new repository that ``write(folder)`` fills; stopped on exit."""
        folder = self.work / name
        folder.mkdir()
        models = write(folder / "models")
        self.log(f"[{name}] starting bnserve serve")
        with BenchServer(models, folder / "server.log", env) as server:
            self.log(f"[{name}] ready; idle after {server.settle_seconds:.1f} s of start-up work")
            yield server

    def measure(
        self, server: BenchServer, request: bytes, connections: int, seconds: float
    ) -> Measured:
        """Run ``connections`` closed-loop clients for ``seconds`` (after a warm-up)."""
        spec = LoadSpec(server.host, server.port, request, connections, seconds, WARMUP_SECONDS)
        live = (server.pid, self.load.pid)
        cpu_before, start = server.cpu_seconds(), CpuSnapshot.take(live)
        result = self.load.run(spec)
        end = CpuSnapshot.take(live)
        server_cpu = server.cpu_seconds() - cpu_before
        wall = result.wall_seconds or (seconds + WARMUP_SECONDS)
        others = end.others_since(start)
        return Measured(result, server_cpu / wall, result.cpu_seconds / wall, others)
