"""Smoke tests of the benchmark suite's parts, in very reduced form (no timing assertions)."""

import argparse
import io
import json
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from service.bench.adaptation import ACTIVATE, CAPTURE_ONLY
from service.bench.bodies import binary_request, digits_sample, json_request
from service.bench.harness import Bench
from service.bench.loadgen import LoadProcess, LoadSpec, encode_request, run_blocking
from service.bench.models import ResNet18, config_toml, write_digits_repository
from service.bench.report import Row, Target, format_markdown, format_text, to_json
from service.bench.server import ADMIN_TOKEN, BenchServer
from service.bench.soak import soak
from service.bench.upload import npy_chunks, npy_header, post_stream, raw_body
from service.config import load_model_config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchServer]:
    root = tmp_path_factory.mktemp("bench")
    with BenchServer(write_digits_repository(root / "models"), root / "server.log") as live:
        yield live


def _served_count(server: BenchServer, code: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("} ")
        if name == "bnserve_requests_total" and {'model="digits"', f'code="{code}"'} <= set(
            labels.split(",")
        ):
            return float(value)
    return 0.0


def test_load_generator_counts_every_response(server: BenchServer) -> None:
    before = _served_count(server, "200")
    spec = LoadSpec(server.host, server.port, json_request("digits", digits_sample()), 2, 0.5)
    result = run_blocking(spec)
    assert result.count > 0
    assert result.errors == 0
    assert dict(result.statuses) == {200: result.count}
    assert min(result.latencies_ns) > 0
    assert result.cpu_seconds > 0
    # No warm-up: every request sent was recorded, and the server counted the same number.
    assert _served_count(server, "200") - before == result.count


def test_load_generator_binary_body_and_error_statuses(server: BenchServer) -> None:
    binary = LoadSpec(server.host, server.port, binary_request("digits", digits_sample()), 1, 0.5)
    result = run_blocking(binary)
    assert result.count > 0 and dict(result.statuses) == {200: result.count}
    missing = LoadSpec(server.host, server.port, json_request("nope", digits_sample()), 1, 0.5)
    result = run_blocking(missing)
    assert result.count > 0 and dict(result.statuses) == {404: result.count}


def test_soak_counts_every_response_and_samples_rss_in_each_window(
    server: BenchServer, tmp_path: Path
) -> None:
    before = _served_count(server, "200")
    with LoadProcess() as load:
        bench = Bench(tmp_path, load, quick=True, log=lambda _: None)
        request = json_request("digits", digits_sample())
        result = soak(bench, server, request, minutes=0.05, rss_interval=0.2)  # 3 x 1 s
    assert len(result.windows) == 3
    assert result.failures == 0 and result.responses > 0
    assert _served_count(server, "200") - before == result.responses
    rss_now = server.memory_kb()["VmRSS"] / 1024
    for window in result.windows:
        assert window.rss_mib and all(0 < rss < 2 * rss_now for rss in window.rss_mib)
    assert not math.isnan(result.growth_mib)


def test_raw_upload_is_recalibrated_sample_for_sample(server: BenchServer) -> None:
    samples = 1000
    upload = post_stream(
        server.host,
        server.port,
        "/v2/models/digits/recalibrate?dry_run=true",
        raw_body(samples, (1, 8, 8), chunk_samples=300),
        samples * 256,
        "application/octet-stream",
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert upload.status == 200, upload.body
    report = json.loads(upload.body)
    assert report["samples"] == samples and report["bytes"] == samples * 256
    assert report["version"] is None  # dry run: nothing written


def test_encoded_request_is_valid_http() -> None:
    request = encode_request("/p", b'{"a":1}', headers={"X-Y": "z"})
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /p HTTP/1.1"
    assert "Content-Length: 7" in lines and "X-Y: z" in lines
    assert body == b'{"a":1}'


@pytest.mark.parametrize("shape", [(3,), (7, 1, 8, 8), (512, 3, 224, 224), (100_000, 13)])
def test_npy_header_matches_numpy(shape: tuple[int, ...]) -> None:
    expected = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        expected, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    assert npy_header(shape) == expected.getvalue()


def test_npy_body_matches_numpy() -> None:
    data = np.arange(7 * 64, dtype=np.float32).reshape(7, 1, 8, 8)
    expected = io.BytesIO()
    np.save(expected, data)
    assert b"".join(npy_chunks(data, 3)) == expected.getvalue()


@pytest.mark.parametrize("adaptation", [CAPTURE_ONLY, ACTIVATE])
def test_adaptation_repositories_are_valid_for_the_service(tmp_path: Path, adaptation: str) -> None:
    write_digits_repository(tmp_path, adaptation=adaptation)
    config = load_model_config(tmp_path / "digits" / "config.toml")
    assert config.adaptation.capture == 2048
    assert config.adaptation.trigger == ("off" if adaptation == CAPTURE_ONLY else "activate")


@pytest.mark.parametrize(("batching", "drift"), [(True, None), (False, True), (True, False)])
def test_config_toml_is_valid_for_the_service(
    tmp_path: Path, batching: bool, drift: bool | None
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(config_toml((3, 32, 32), 1000, batching, drift), encoding="utf-8")
    config = load_model_config(path)
    assert config.batching.enabled is batching
    assert config.drift.enabled is (True if drift is None else drift)  # None: service default
    assert config.inputs[0].shape == (3, 32, 32) and config.outputs[0].shape == (1000,)


def test_resnet_has_resnet18_size() -> None:
    module = ResNet18()
    # torchvision's resnet18: 11,689,512 parameters, 20 BatchNorm2d layers.
    assert sum(p.numel() for p in module.parameters()) == 11_689_512
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()) == 20


def _rows() -> list[Row]:
    return [
        Row("a", "p50", 0.25, "ms", 0.05, "bare", Target("<=", 0.30, "ms"), "n|1"),
        Row("c", "latency", 12.0, "ms", 10.0, "bare", Target("<=", 1.15, on_ratio=True)),
        Row("e", "rate", 3.0, "samples/s", 2.0, "update_bn", Target(">=", 2.0, on_ratio=True)),
        Row("f", "growth", 3.0, "MiB", target=Target("<=", 64, "MiB")),
        Row("x", "FAILED", float("nan"), ""),
    ]


def test_report_ratios_and_verdicts() -> None:
    rows = _rows()
    assert rows[0].ratio == pytest.approx(5.0) and rows[0].met is True
    assert rows[1].ratio == pytest.approx(1.2) and rows[1].met is False
    assert rows[2].ratio == pytest.approx(1.5) and rows[2].met is False
    assert rows[3].ratio is None and rows[3].met is True
    assert str(rows[1].target) == "<= 1.15x" and str(rows[0].target) == "<= 0.3 ms"


def test_report_formats() -> None:
    rows = _rows()
    text = format_text(rows).splitlines()
    assert len(text) == len(rows) + 2
    assert "MISSED" in text[3] and "met" in text[2] and "1.20x" in text[3]
    markdown = format_markdown(rows, {"cpu": "x", "cores": "2"}, 12.0, ["a note"])
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == len(rows) + 2
    assert all(line.count(" | ") == 7 for line in table[2:])  # the "|" in a note is escaped
    assert markdown.rstrip().endswith("a note")
    document = json.loads(to_json(rows, {"cores": "2"}, 12.0))
    assert document["rows"][1]["ratio"] == pytest.approx(1.2)
    assert document["rows"][4]["value"] is None  # NaN is not JSON


def test_command_line_knows_every_case() -> None:
    from service.bench.__main__ import LETTERS, _letters
    from service.bench.cases import CASES

    assert tuple(CASES) == LETTERS
    assert _letters(" a, F") == ["a", "f"]
    with pytest.raises(argparse.ArgumentTypeError):
        _letters("a,z")
