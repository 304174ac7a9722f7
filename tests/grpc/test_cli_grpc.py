"""``bnserve recalibrate --grpc`` against a real ``bnserve serve``: the same file gives the
statistics and the report table of the HTTP upload; refusals exit 2 with the server's message;
the client's parameters are the server's."""

import dataclasses
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from service.cli.client.recalibrate import recalibration_query
from service.cli.client.recalibrate_grpc import grpc_parameters, grpc_target
from service.cli.main import main
from service.examples.data import corrupt, load_digits_split
from service.grpc.generated.bnserve.v1 import recalibration_pb2 as pb
from service.recalibration.params import RecalibrationParams
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, LiveServer, free_port, start_server
from tests.recalibration.recalibration_support import assert_stats_identical, file_statistics

Served = tuple[LiveServer, str, Path]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("cli-grpc")
    repo = root / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", repo / "digits")
    port = free_port()
    server = start_server(repo, root / "server.log", BNSERVE_GRPC_PORT=str(port))
    try:
        yield server, f"127.0.0.1:{port}", repo
    finally:
        server.stop()


@pytest.fixture(scope="module")
def npy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("samples") / "contrast5.npy"
    np.save(path, corrupt(load_digits_split()[2], "contrast", 5))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _without_versions(table: str) -> str:
    """The report table without its first line, which names the version written."""
    return table.split("\n", 1)[1]


def test_grpc_upload_matches_the_http_upload(
    served: Served, npy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, target, repo = served
    common = ("recalibrate", "digits", str(npy_file), "--token", ADMIN_TOKEN, "--no-activate")
    code, over_http, _ = run_cli(capsys, *common, "--url", live.url)
    assert code == 0
    code, over_grpc, err = run_cli(capsys, *common, "--grpc", target)
    assert code == 0, err
    assert over_http.startswith("digits: version 1 -> 2 (not activated")
    assert over_grpc.startswith("digits: version 1 -> 3 (not activated")
    # Durations aside, the same table: the same report came back.
    timing = re.compile(r"\d+(\.\d+)? s\b")
    assert timing.sub("", _without_versions(over_grpc)) == timing.sub(
        "", _without_versions(over_http)
    )
    assert err.startswith("sent 0.2 MB in ")  # the progress summary of the HTTP client
    assert_stats_identical(
        file_statistics(repo / "digits" / "3"), file_statistics(repo / "digits" / "2")
    )
    code, out, _ = run_cli(capsys, *common, "--grpc", target, "--dry-run", "--json")
    assert code == 0
    report = orjson.loads(out)
    assert (report["version"], report["parameters"]["dry_run"]) == (None, True)
    assert sorted(p.name for p in (repo / "digits").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
        "3",
    ]


def test_grpc_refusals_exit_2_with_the_servers_message(
    served: Served, npy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, target, repo = served
    before = sorted(p.name for p in (repo / "digits").iterdir())
    cases = [
        (("--token", "wrong"), "admin operation: invalid bearer token (gRPC UNAUTHENTICATED)"),
        (
            ("--token", ADMIN_TOKEN, "--batch-size", "1"),
            "parameters.batch_size: Input should be greater than or equal to 2 "
            "(gRPC INVALID_ARGUMENT)",
        ),
        (
            ("--token", ADMIN_TOKEN, "--momentum", "0.5"),
            "momentum applies only to mode 'ema', not 'cumulative' (gRPC INVALID_ARGUMENT)",
        ),
    ]
    for extra, message in cases:
        argv = ("recalibrate", "digits", str(npy_file), "--grpc", target, *extra)
        code, out, err = run_cli(capsys, *argv)
        assert (code, out) == (2, "")
        assert err.strip().endswith(f"error: {message}"), err
    assert sorted(p.name for p in (repo / "digits").iterdir()) == before


def test_unreachable_grpc_server_exits_1(
    npy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{free_port()}"
    argv = ("recalibrate", "digits", str(npy_file), "--grpc", target, "--timeout", "0.5")
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert f"cannot reach {target}: no gRPC connection in 0.5 s" in err


def test_client_parameters_are_the_servers() -> None:
    """The proto carries exactly the server's parameters, and the client's query converts
    into it value for value."""
    fields = [field.name for field in pb.RecalibrationParameters.DESCRIPTOR.fields]
    assert fields == [field.name for field in dataclasses.fields(RecalibrationParams)]
    query = recalibration_query(
        mode="ema", batch_size=48, prior=None, momentum=0.1, layers="bn*", dry_run=True,
        activate=False,
    )  # fmt: skip
    message = grpc_parameters(query)
    assert (message.mode, message.batch_size, message.momentum, message.layers) == (
        "ema", 48, 0.1, "bn*",
    )  # fmt: skip
    assert (message.dry_run, message.activate) == (True, False)
    assert not message.HasField("prior")
    assert not grpc_parameters(recalibration_query()).ListFields()
    assert grpc_target("", "http://example.org:8000/x") == "example.org:8001"
    assert grpc_target("h:9", "http://example.org:8000") == "h:9"
