"""Case k: one model, one server, three ways in: gRPC (raw contents), HTTP with binary tensors
and HTTP JSON, measured in interleaved rounds (``rounds``), gRPC's figures over each HTTP
form's.

Before anything is measured, one gRPC answer is decoded and compared with the HTTP answer to
the same sample, byte for byte: a load of error answers (or of wrong ones) would otherwise be
measured as fast as any. The rows have no targets: they inform, they do not judge.
"""

import dataclasses
import functools
import http.client
import json
import socket
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.bench import grpcload, loadgen
from service.bench.bodies import binary_request, digits_sample, json_request
from service.bench.comparison import contender
from service.bench.harness import Bench
from service.bench.models import DIGITS, RESNET, write_digits_repository, write_resnet_repository
from service.bench.report import Row
from service.bench.rounds import Probe, Rounds, Stat, interleave, p50, p99, rate
from service.bench.server import BenchServer
from service.grpc.generated.inference import grpc_service_pb2 as pb

GRPC = "gRPC raw"
BINARY = "HTTP binary"
JSON = "HTTP JSON"
SHAPES = (1, 32)
"""Connections of the digits load shapes; the ResNet runs at 1."""
INFORMATIONAL = "informational, no target"

Outputs = dict[str, tuple[str, tuple[int, ...], bytes]]
"""Output name -> datatype, shape and raw little-endian bytes."""


def http_outputs(server: BenchServer, request: bytes) -> Outputs:
    """The outputs of one pre-encoded binary-tensor HTTP request (``bodies.binary_request``)."""
    with socket.create_connection((server.host, server.port), timeout=60) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP inference answered {response.status}: {body[:500]!r}")
    length = int(response.getheader("Inference-Header-Content-Length") or len(body))
    outputs: Outputs = {}
    offset = length
    for output in json.loads(body[:length])["outputs"]:
        size = output["parameters"]["binary_data_size"]
        shape = tuple(output["shape"])
        outputs[output["name"]] = (output["datatype"], shape, body[offset : offset + size])
        offset += size
    return outputs


def grpc_outputs(server: BenchServer, request: bytes) -> Outputs:
    """The outputs of one serialized ``ModelInferRequest`` with raw contents."""
    answer = pb.ModelInferResponse.FromString(
        grpcload.call_once(server.host, server.grpc_port, request)
    )
    return {
        output.name: (output.datatype, tuple(output.shape), raw)
        for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)
    }


def check_same_answer(server: BenchServer, model: str, x: npt.NDArray[np.float32]) -> None:
    """Raise unless gRPC and HTTP binary give ``x`` bit-identical outputs."""
    over_grpc = grpc_outputs(server, grpcload.infer_request(model, x))
    over_http = http_outputs(server, binary_request(model, x))
    if over_grpc != over_http:
        differ = sorted(set(over_grpc) ^ set(over_http)) or [
            name for name in over_grpc if over_grpc[name] != over_http[name]
        ]
        raise RuntimeError(
            f"{model}: gRPC and HTTP binary answers to the same sample differ (outputs "
            f"{differ}; gRPC {[a[:2] for a in over_grpc.values()]}, "
            f"HTTP {[a[:2] for a in over_http.values()]})"
        )


def _way_in(name: str, server: BenchServer) -> tuple[loadgen.Drive, int]:
    """The load generator and port of the contender ``name``."""
    if name == GRPC:
        return grpcload.run_blocking, server.grpc_port
    return loadgen.run_blocking, server.port


def _measure(
    bench: Bench,
    server: BenchServer,
    model: str,
    x: npt.NDArray[np.float32],
    shapes: Sequence[int],
    contenders: Sequence[str],
) -> Rounds:
    """Warm every way in, check the answers, then the rounds of ``contenders`` x ``shapes``."""
    requests = {
        GRPC: grpcload.infer_request(model, x),
        BINARY: binary_request(model, x),
        JSON: json_request(model, x),
    }
    for name in contenders:
        bench.warm(server, requests[name], *_way_in(name, server))
    check_same_answer(server, model, x)
    seconds = bench.seconds(4.0, 1.0)
    probes: dict[str, Probe] = {}
    for connections in shapes:
        for name in contenders:
            drive, port = _way_in(name, server)
            probes[contender(name, connections)] = bench.probe(
                server, requests[name], connections, seconds, drive, port
            )
    rounds = interleave(probes, bench.rounds, bench.log)
    failures = {name: rounds.median(name).failures for name in rounds.measured}
    if any(failures.values()):
        raise RuntimeError(f"{model}: non-OK answers or connection errors: {failures}")
    return rounds


def versus(
    rounds: Rounds, metric: str, stat: Stat, unit: str, connections: int, against: Sequence[str]
) -> list[Row]:
    """``metric`` of gRPC over that of each of ``against``, one row each (case k)."""
    rows = []
    for name in against:
        pair = (contender(GRPC, connections), contender(name, connections), name)
        row = rounds.row("k", f"{metric}, {GRPC} vs {name}", stat, unit, pair)
        rows.append(dataclasses.replace(row, note=f"{INFORMATIONAL}; {row.note}"))
    return rows


def digits_rows(bench: Bench) -> list[Row]:
    """Digits at 1 and 32 connections: p50 and req/s (and p99 at 32), gRPC over HTTP binary
    and over HTTP JSON."""
    with bench.server("k-digits", write_digits_repository, grpc=True) as server:
        rounds = _measure(bench, server, DIGITS, digits_sample(), SHAPES, (GRPC, BINARY, JSON))
    both = (BINARY, JSON)
    rows = []
    for connections in SHAPES:
        shape = f"digits {{}}, {connections} conn"
        rows += versus(rounds, shape.format("p50"), p50, "ms", connections, both)
        rows += versus(rounds, shape.format("req/s"), rate, "req/s", connections, both)
        if connections > 1:
            rows += versus(rounds, shape.format("p99"), p99, "ms", connections, both)
    return rows


def resnet_rows(bench: Bench, onnx_file: Path, x: npt.NDArray[np.float32]) -> list[Row]:
    """ResNet-18, one sample ``x`` on 1 connection: p50, gRPC over HTTP binary."""
    write = functools.partial(
        write_resnet_repository, onnx_file=onnx_file, image_size=bench.image_size
    )
    with bench.server("k-resnet", write, grpc=True) as server:
        rounds = _measure(bench, server, RESNET, x, (1,), (GRPC, BINARY))
    metric = f"resnet18 p50, 1 sample 3x{bench.image_size}x{bench.image_size}, 1 conn"
    return versus(rounds, metric, p50, "ms", 1, [BINARY])
