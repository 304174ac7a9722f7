"""The gRPC load generator against a real bnserve: what it counts is what the server served."""

import dataclasses
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from service.bench import grpcload
from service.bench.bodies import digits_sample
from service.bench.loadgen import LoadResult, LoadSpec
from service.bench.models import digits_model_file, write_digits_repository
from service.bench.server import BenchServer, free_port
from service.grpc.generated.inference import grpc_service_pb2 as pb


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchServer]:
    root = tmp_path_factory.mktemp("grpcload")
    models = write_digits_repository(root / "models")
    with BenchServer(models, root / "server.log", grpc=True) as live:
        yield live


def _grpc_served(server: BenchServer, code: str) -> float:
    """``bnserve_requests_total{model="digits",code=code,protocol="grpc"}``."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = {'model="digits"', f'code="{code}"', 'protocol="grpc"'}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("} ")
        if name == "bnserve_requests_total" and wanted <= set(labels.split(",")):
            return float(value)
    return 0.0


def _spec(server: BenchServer, model: str, connections: int, seconds: float) -> LoadSpec:
    request = grpcload.infer_request(model, digits_sample())
    return LoadSpec(server.host, server.grpc_port, request, connections, seconds)


def test_every_call_is_counted_as_the_server_counted_it(server: BenchServer) -> None:
    before = _grpc_served(server, "OK")
    result = grpcload.run_blocking(_spec(server, "digits", 2, 0.5))
    assert result.count > 0 and result.errors == 0
    assert dict(result.statuses) == {grpcload.OK_STATUS: result.count}
    assert min(result.latencies_ns) > 0 and result.cpu_seconds > 0
    assert _grpc_served(server, "OK") - before == result.count  # no warm-up: all recorded


def test_warm_up_calls_are_sent_but_not_recorded(server: BenchServer) -> None:
    before = _grpc_served(server, "OK")
    spec = _spec(server, "digits", 1, 0.3)
    result = grpcload.run_blocking(dataclasses.replace(spec, warmup=0.3))
    served = _grpc_served(server, "OK") - before
    assert 0 < result.count < served


def test_an_error_status_is_counted_under_its_code(server: BenchServer) -> None:
    before = _grpc_served(server, "NOT_FOUND")
    result = grpcload.run_blocking(_spec(server, "no-such-model", 1, 0.3))
    assert result.count > 0 and result.errors == 0
    assert dict(result.statuses) == {grpc.StatusCode.NOT_FOUND.value[0]: result.count}
    assert grpcload.OK_STATUS not in result.statuses
    # Unknown models are not labelled in the metrics (bounded labels): nothing counted there.
    assert _grpc_served(server, "NOT_FOUND") == before


def test_a_server_that_is_not_there_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(grpcload, "CONNECT_SECONDS", 0.5)
    result = grpcload.run_blocking(LoadSpec("127.0.0.1", free_port(), b"", 2, 0.2))
    assert result.count == 0 and result.errors == 2


def _established(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's ends)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def test_each_connection_is_its_own_http2_connection(server: BenchServer) -> None:
    results: list[LoadResult] = []
    spec = _spec(server, "digits", 3, 1.0)
    worker = threading.Thread(target=lambda: results.append(grpcload.run_blocking(spec)))
    worker.start()
    seen = 0
    while worker.is_alive():
        seen = max(seen, _established(server.grpc_port))
        worker.join(0.05)
    assert results[0].count > 0 and results[0].errors == 0
    assert seen == 3


def test_one_call_answers_what_onnxruntime_computes(server: BenchServer) -> None:
    x = digits_sample()
    answer = pb.ModelInferResponse.FromString(
        grpcload.call_once(server.host, server.grpc_port, grpcload.infer_request("digits", x))
    )
    session = ort.InferenceSession(str(digits_model_file()), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: x})
    (output,) = answer.outputs
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(tuple(output.shape))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports that process ``pid`` listens on (its socket inodes in /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_bench_servers_listen_for_grpc_only_when_asked(server: BenchServer, tmp_path: Path) -> None:
    assert _listening_ports(server.pid) == {server.port, server.grpc_port}
    models = write_digits_repository(tmp_path / "models")
    with BenchServer(models, tmp_path / "server.log") as http_only:
        assert http_only.grpc_port == 0
        assert _listening_ports(http_only.pid) == {http_only.port}
