"""Shared fixtures: a copy of the bundled model repository -> app -> client; a real server."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import ServiceSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODELS = REPO_ROOT / "models"
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A private copy of the bundled model repository."""
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS, root)
    return root


def make_client(models: Path, **settings: object) -> TestClient:
    """The app on ``models``; no gRPC server unless ``grpc_port`` is given (tests run in
    parallel, and the default 8001 would collide)."""
    settings = {"grpc_port": 0, **settings}
    app = create_app(ServiceSettings(models=models, admin_token=ADMIN_TOKEN, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(model_repo: Path) -> Iterator[TestClient]:
    with make_client(model_repo) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def bundled_client() -> Iterator[TestClient]:
    """A client on the bundled repository, shared by read-only tests."""
    with make_client(BUNDLED_MODELS) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(models: Path, log: Path, timeout: float = 60.0, **env: str) -> LiveServer:
    """``bnserve serve`` in a subprocess on 127.0.0.1, returned once it reports ready; gRPC
    off unless ``env`` sets ``BNSERVE_GRPC_PORT`` (to a ``free_port()``)."""
    port = free_port()
    environ = {**os.environ, "BNSERVE_ADMIN_TOKEN": ADMIN_TOKEN, "BNSERVE_GRPC_PORT": "0", **env}
    with log.open("wb") as handle:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "serve",
                "--models",
                str(models),
                "--port",
                str(port),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", port, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout} s: {log.read_text()}")


class RestartableServer:
    """``bnserve serve`` on one repository, for tests that kill it and start it again;
    ``env`` (``BNSERVE_*`` variables) applies to every start."""

    def __init__(self, repo: Path, logs: Path, **env: str) -> None:
        self.repo, self.logs, self.env, self.starts = repo, logs, env, 0
        self._live: LiveServer | None = None

    @property
    def live(self) -> LiveServer:
        assert self._live is not None, "call start() first"
        return self._live

    def start(self) -> LiveServer:
        """Start (again) on the same repository, logging to ``server-<n>.log``."""
        self.starts += 1
        log = self.logs / f"server-{self.starts}.log"
        self._live = start_server(self.repo, log, **self.env)
        return self._live

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()


@pytest.fixture
def live_server(model_repo: Path, tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(model_repo, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()
