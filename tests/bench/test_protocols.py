"""Case k (gRPC vs HTTP binary vs HTTP JSON): its rows, and that each is made of the figures
that were measured for it."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.bench import grpcload, protocols
from service.bench.bodies import binary_request, digits_sample
from service.bench.cases import CASES
from service.bench.harness import Bench, Measured
from service.bench.loadgen import Drive, LoadProcess, run_blocking
from service.bench.models import write_digits_repository
from service.bench.rounds import Figures
from service.bench.server import BenchServer, ServerProcess


class RecordingBench(Bench):
    """A quick ``Bench`` that keeps every measurement's figures by contender."""

    measured: dict[tuple[str, str, int], Figures]

    def measure(
        self,
        server: ServerProcess,
        request: bytes,
        connections: int,
        seconds: float,
        drive: Drive = run_blocking,
        port: int | None = None,
    ) -> Measured:
        measured = super().measure(server, request, connections, seconds, drive, port)
        if port is not None and port != server.port:
            way = protocols.GRPC
        elif b"application/octet-stream" in request.partition(b"\r\n\r\n")[0]:
            way = protocols.BINARY
        else:
            way = protocols.JSON
        model = "resnet18" if b"resnet18" in request else "digits"
        key = (model, way, connections)
        assert key not in self.measured  # one round: one measurement each
        self.measured[key] = measured.figures()
        return measured


EXPECTED = [
    ("digits p50, 1 conn", "p50_ms", "digits", 1, protocols.BINARY),
    ("digits p50, 1 conn", "p50_ms", "digits", 1, protocols.JSON),
    ("digits req/s, 1 conn", "rate", "digits", 1, protocols.BINARY),
    ("digits req/s, 1 conn", "rate", "digits", 1, protocols.JSON),
    ("digits p50, 32 conn", "p50_ms", "digits", 32, protocols.BINARY),
    ("digits p50, 32 conn", "p50_ms", "digits", 32, protocols.JSON),
    ("digits req/s, 32 conn", "rate", "digits", 32, protocols.BINARY),
    ("digits req/s, 32 conn", "rate", "digits", 32, protocols.JSON),
    ("digits p99, 32 conn", "p99_ms", "digits", 32, protocols.BINARY),
    ("digits p99, 32 conn", "p99_ms", "digits", 32, protocols.JSON),
    ("resnet18 p50, 1 sample 3x32x32, 1 conn", "p50_ms", "resnet18", 1, protocols.BINARY),
]
"""Metric (without the contenders), figure, model, connections, HTTP contender."""


@pytest.mark.slow
def test_case_k_rows_are_the_measured_figures(tmp_path: Path) -> None:
    with LoadProcess() as load:
        bench = RecordingBench(tmp_path, load, quick=True, image_size=32, log=lambda _: None)
        bench.measured = {}
        rows = CASES["k"](bench)
    assert [row.metric for row in rows] == [
        f"{metric}, {protocols.GRPC} vs {http}" for metric, _, _, _, http in EXPECTED
    ]
    for row, (_, figure, model, connections, http) in zip(rows, EXPECTED, strict=True):
        grpc = getattr(bench.measured[(model, protocols.GRPC, connections)], figure)
        baseline = getattr(bench.measured[(model, http, connections)], figure)
        assert np.isfinite(grpc) and grpc > 0 and np.isfinite(baseline) and baseline > 0
        assert row.value == grpc and row.baseline == baseline and row.baseline_label == http
        assert row.ratio == grpc / baseline
        assert row.target is None and row.met is None
    assert all(figures.failures == 0 for figures in bench.measured.values())
    assert all(figures.responses > 0 for figures in bench.measured.values())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchServer]:
    root = tmp_path_factory.mktemp("protocols")
    with BenchServer(write_digits_repository(root / "models"), root / "log", grpc=True) as live:
        yield live


def test_answers_compared_are_the_decoded_outputs(server: BenchServer) -> None:
    x = digits_sample()
    over_http = protocols.http_outputs(server, binary_request("digits", x))
    (name,) = over_http
    datatype, shape, raw = over_http[name]
    assert (datatype, shape, len(raw)) == ("FP32", (1, 10), 40)
    assert protocols.grpc_outputs(server, grpcload.infer_request("digits", x)) == {
        name: (datatype, shape, raw)
    }
    protocols.check_same_answer(server, "digits", x)  # the same, so no error


def test_a_different_grpc_answer_stops_the_case(
    server: BenchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = protocols.grpc_outputs

    def off_by_one_bit(server: BenchServer, request: bytes) -> protocols.Outputs:
        (name, (datatype, shape, raw)), *_ = real(server, request).items()
        flipped = bytes([raw[0] ^ 1]) + raw[1:]
        return {name: (datatype, shape, flipped)}

    monkeypatch.setattr(protocols, "grpc_outputs", off_by_one_bit)
    with pytest.raises(RuntimeError, match=r"gRPC and HTTP binary answers .* differ"):
        protocols.check_same_answer(server, "digits", digits_sample())
