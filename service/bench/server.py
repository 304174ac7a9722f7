"""Servers in subprocesses on 127.0.0.1, for benchmarks: start, wait ready, measure, stop.

``bnserve serve`` and the lean baseline are started with the same interpreter (``python -m
...``), so each pid is the server process itself and ``/proc/<pid>`` describes the server,
not a wrapper.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from service.bench.cpu import process_cpu_seconds

ADMIN_TOKEN = "bench-admin-token"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _other_free_port(taken: int) -> int:
    """A free port that is not ``taken`` (still free: nothing listens there yet)."""
    while (port := free_port()) == taken:
        pass
    return port


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


class ServerProcess:
    """``python *command`` listening on 127.0.0.1:``port`` (the command must say so), ready
    once ``GET ready_path`` answers 200 and the process is idle; a context manager that stops
    it.

    bnserve and the lean baseline both start this way (same interpreter, same environment),
    so that neither gets a different kind of process than the other.
    """

    def __init__(
        self,
        command: list[str],
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/v2/health/ready",
        timeout: float = 120.0,
    ) -> None:
        self.port = port
        self.host = "127.0.0.1"
        environ = {**os.environ, **(env or {})}
        # The child must import this same ``service`` package, from wherever it was started.
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_PACKAGE_ROOT), environ.get("PYTHONPATH")])
        )
        self.log = log
        with log.open("wb") as handle:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, *command],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=environ,
            )
        try:
            self._wait_ready(ready_path, timeout)
            self.settle_seconds = self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def get_status(self, path: str) -> int:
        """The status code of ``GET path``."""
        return _get_status(self.url + path)

    def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}: {self.log.read_text()}"
                )
            try:
                if self.get_status(path) == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log.read_text()}")

    def _wait_idle(self, timeout: float, window: float = 0.5, busy: float = 0.05) -> float:
        """Wait until the server uses under ``busy`` of a core over ``window`` seconds.

        Ready is not idle: background start-up work (drift baselines on the reference data,
        lazily built sessions) would otherwise land in the first measurement. Returns the
        seconds waited.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            before = self.cpu_seconds()
            time.sleep(window)
            if self.cpu_seconds() - before < busy * window:
                return time.monotonic() - start
        raise RuntimeError(f"server still busy {timeout} s after start: {self.log.read_text()}")

    def memory_kb(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak RSS) of the server process, in kB."""
        values: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values

    def reset_peak(self) -> bool:
        """Restart ``VmHWM`` from the current RSS (Linux ``clear_refs``); False if refused."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
        except OSError:
            return False
        return True

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        return process_cpu_seconds(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BenchServer(ServerProcess):
    """A running ``bnserve serve --models <models>``.

    ``models`` must be a private copy: recalibrations may write versions into it. ``env``
    adds ``BNSERVE_*`` settings; the admin token is ``ADMIN_TOKEN``. gRPC is off unless
    ``grpc``, then on a free port of its own (``grpc_port``): the service's default, 8001,
    would be shared by every bench server running at once (grpc binds with SO_REUSEPORT).
    """

    def __init__(
        self,
        models: Path,
        log: Path,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
        grpc: bool = False,
    ) -> None:
        port = free_port()
        self.grpc_port = _other_free_port(port) if grpc else 0
        command = ["-m", "service", "serve", "--models", str(models)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        command += ["--grpc-port", str(self.grpc_port)]
        environ = {
            "BNSERVE_ADMIN_TOKEN": ADMIN_TOKEN,
            "BNSERVE_LOG_LEVEL": "warning",
            **(env or {}),
        }
        super().__init__(command, port, log, environ, timeout=timeout)

    def __enter__(self) -> "BenchServer":
        return self


class LeanServer(ServerProcess):
    """The lean baseline (``service.bench.lean``) serving one ONNX file."""

    def __init__(self, model: Path, log: Path, max_batch: int = 64, timeout: float = 120.0) -> None:
        port = free_port()
        command = ["-m", "service.bench.lean", "--model", str(model), "--port", str(port)]
        command += ["--max-batch", str(max_batch)]
        super().__init__(command, port, log, None, "/v2/health/live", timeout)

    def __enter__(self) -> "LeanServer":
        return self


class RssSampler:
    """A server's VmRSS (kB) every ``interval`` seconds on a thread, with each sample's time
    (``time.perf_counter``), from construction until ``stop``."""

    def __init__(self, server: ServerProcess, interval: float) -> None:
        self.samples: list[tuple[float, int]] = []
        self._server, self._interval = server, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self._server.memory_kb()["VmRSS"]))
            self._stop.wait(self._interval)

    def between(self, start: float, end: float) -> tuple[float, ...]:
        """The samples taken in ``[start, end)``, in MiB."""
        return tuple(kb / 1024 for at, kb in self.samples if start <= at < end)

    def peak_kb(self) -> int:
        return max((kb for _, kb in self.samples), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
