"""The operator's client: ``bnserve recalibrate / versions / activate`` against a real server,
and its pure formatters."""

import dataclasses
import inspect
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.cli.client.commands import MODES as CLIENT_MODES
from service.cli.client.progress import ProgressBar, format_progress, format_summary
from service.cli.client.recalibrate import content_type_for, file_chunks, recalibration_query
from service.cli.client.tables import (
    format_adaptation,
    format_report,
    format_table,
    format_versions,
)
from service.cli.client.transport import ClientError, Endpoint, UsageError, error_message
from service.cli.inspect_model import inspect_file
from service.cli.main import main
from service.examples import corrupt, load_digits_split
from service.recalibration.params import RecalibrationParams
from service.stats.recalibrate import MODES
from tests.adaptation.adaptation_support import digits_repo
from tests.api.test_status_page_adaptation import ONE_CLASS, until_decided
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, LiveServer, free_port, start_server

Outcome = tuple[int, str, str]


@pytest.fixture(scope="module")
def corrupted() -> npt.NDArray[np.float32]:
    """The digits test split at contrast severity 5: a real shift for BatchNorm."""
    return corrupt(load_digits_split()[2], "contrast", 5)


@pytest.fixture(scope="module")
def npy_file(corrupted: npt.NDArray[np.float32], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("samples") / "contrast5.npy"
    np.save(path, corrupted)
    return path


@pytest.fixture(scope="module")
def shared_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shared") / "models"
    shutil.copytree(BUNDLED_MODELS, root)
    return root


@pytest.fixture(scope="module")
def shared_server(shared_models: Path) -> Iterator[LiveServer]:
    """One server for the tests that leave the served versions as they found them."""
    server = start_server(shared_models, shared_models.parent / "server.log")
    try:
        yield server
    finally:
        server.stop()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> dict[str, list[str]]:
    """Table cells by first column; columns are separated by two spaces or more."""
    rows = (re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip())
    return {cells[0]: cells for cells in rows if len(cells) > 2}


def stored_bn_layers(model: str) -> list[tuple[str, int]]:
    _, layers = inspect_file(BUNDLED_MODELS / model / "1" / "model.onnx")
    return [(layer.name, layer.channels) for layer in layers if not layer.batch_independent]


def pair(stats: dict[str, Any], field: str) -> str:
    return f"{stats['drift_before'][field]:.4f} -> {stats['drift_after'][field]:.4f}"


def version_dirs(models: Path, model: str) -> list[str]:
    return sorted(p.name for p in (models / model).iterdir() if p.is_dir())


# ---------------------------------------------------------------- against a real server


def test_recalibrate_prints_every_layer_and_activates_version_2(
    live_server: LiveServer,
    model_repo: Path,
    npy_file: Path,
    corrupted: npt.NDArray[np.float32],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        capsys, "recalibrate", "digits", str(npy_file), "--url", live_server.url,
        "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert code == 0, err
    assert (model_repo / "digits" / "active").read_text().strip() == "2"
    written = orjson.loads((model_repo / "digits" / "2" / "recalibration.json").read_bytes())

    used = len(corrupted) // 64 * 64  # config.toml: batch_size 64, the partial tail dropped
    assert out.splitlines()[0] == "digits: version 1 -> 2 (activated)"
    assert f"{used} used of {len(corrupted)} received, {len(corrupted) // 64} batches" in out
    assert f"tail of {len(corrupted) - used} dropped" in out
    rows = table_rows(out)
    layers = {layer["name"]: layer for layer in written["layers"]}
    assert [(name, layer["channels"]) for name, layer in layers.items()] == stored_bn_layers(
        "digits"
    )
    for name, layer in layers.items():
        assert rows[name][:3] == [name, "BatchNorm", str(layer["channels"])]
        assert rows[name][3:6] == [pair(layer, f) for f in ("drift", "mean_shift", "log_var_ratio")]
        assert layer["drift_after"]["drift"] < layer["drift_before"]["drift"] / 10
    assert err.startswith("sent 0.2 MB in ")  # stderr is no terminal: one summary line, no bar

    code, out, _ = run_cli(capsys, "versions", "digits", "--url", live_server.url)
    assert code == 0
    assert table_rows(out)["2"][:3] == ["2", "*", "1"]
    assert table_rows(out)["1"][1] == "-"  # no "*" and no provenance: the bundled original

    code, out, _ = run_cli(
        capsys, "activate", "digits", "1", "--url", live_server.url, "--token", ADMIN_TOKEN
    )
    assert (code, out) == (0, "digits: version 1 is active\n")
    assert (model_repo / "digits" / "active").read_text().strip() == "1"
    listing = httpx.get(f"{live_server.url}/v2/models/digits/versions").json()
    assert [(v["version"], v["active"]) for v in listing["versions"]] == [("1", True), ("2", False)]


def test_dry_run_writes_nothing_and_json_is_the_report(
    shared_server: LiveServer,
    shared_models: Path,
    npy_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models = shared_models
    before = (version_dirs(models, "digits"), (models / "digits" / "active").read_text())
    monkeypatch.setenv("BNSERVE_ADMIN_TOKEN", ADMIN_TOKEN)  # the token from the environment
    argv = ("recalibrate", "digits", str(npy_file), "--url", shared_server.url, "--dry-run")
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["version"], report["activated"], report["parameters"]["dry_run"]) == (
        None,
        False,
        True,
    )
    assert report["bytes"] == npy_file.stat().st_size
    assert (version_dirs(models, "digits"), (models / "digits" / "active").read_text()) == before

    code, out, _ = run_cli(capsys, *argv, "--mode", "ema", "--momentum", "0.5", "--layers", "bn*")
    assert code == 0
    assert out.splitlines()[0].endswith("-> none (dry run, nothing written)")
    assert "mode: ema, momentum 0.5, layers: bn*" in out
    assert set(table_rows(out)) >= {"bn1", "bn2"}
    assert "fc_bn" not in table_rows(out)
    assert version_dirs(models, "digits") == before[0]


def test_ndjson_file_gives_the_npy_report(
    shared_server: LiveServer,
    npy_file: Path,
    corrupted: npt.NDArray[np.float32],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = tmp_path / "samples.jsonl"
    lines.write_text("".join(json.dumps(sample.tolist()) + "\n" for sample in corrupted))
    common = ("--url", shared_server.url, "--token", ADMIN_TOKEN, "--dry-run", "--json")
    reports = []
    for path in (npy_file, lines):
        code, out, err = run_cli(capsys, "recalibrate", "digits", str(path), *common)
        assert code == 0, err
        reports.append(json.loads(out))
    npy, ndjson = reports
    assert (npy["content_type"], ndjson["content_type"]) == (
        "application/x-npy",
        "application/x-ndjson",
    )
    assert ndjson["samples"] == npy["samples"] == len(corrupted)
    for a, b in zip(npy["layers"], ndjson["layers"], strict=True):
        for when in ("drift_before", "drift_after"):
            assert b[when]["drift"] == pytest.approx(a[when]["drift"], rel=1e-9, abs=1e-12)


def test_rejected_requests_exit_2_with_the_servers_message(
    shared_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong_shape.npy"
    np.save(wrong, np.zeros((100_000, 2, 8, 8), np.float32))  # 51.2 MB
    url = f"{shared_server.url}/v2/models/digits/recalibrate"
    expected = httpx.post(url, headers={"Authorization": "Bearer nope"}, content=b"").json()
    code, out, err = run_cli(
        capsys, "recalibrate", "digits", str(wrong), "--url", shared_server.url, "--token", "nope"
    )
    assert (code, out) == (2, "")
    assert f"error: {expected['error']} (HTTP 401)" in err
    sent = re.search(r"sent ([\d.]+) of 51.2 MB", err)
    assert sent, err
    assert float(sent.group(1)) < 51.2 / 2  # the client stopped sending once the server answered

    code, _, err = run_cli(
        capsys, "recalibrate", "digits", str(wrong), "--url", shared_server.url,
        "--token", ADMIN_TOKEN,
    )  # fmt: skip
    assert code == 2
    assert re.search(r"error: .*shape.*\(100000, 2, 8, 8\).*\(HTTP 400\)", err)

    code, _, err = run_cli(capsys, "versions", "no_such_model", "--url", shared_server.url)
    assert code == 2
    assert "no_such_model" in err
    assert "(HTTP 404)" in err


def test_adaptation_prints_the_state_and_the_loops_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = digits_repo(tmp_path, "activate")
    server = start_server(models, tmp_path / "server.log", BNSERVE_ADAPTATION_INTERVAL="0.1")
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            body = until_decided(client, ONE_CLASS)  # one class: rejected as a label shift
        code, out, err = run_cli(capsys, "adaptation", "digits", "--url", server.url)
        assert code == 0, err
        json_code, json_out, _ = run_cli(
            capsys, "adaptation", "digits", "--url", server.url, "--json"
        )
        missing = run_cli(capsys, "adaptation", "no_such_model", "--url", server.url)
    finally:
        server.stop()
    assert (json_code, json.loads(json_out)) == (0, body)
    assert missing[0] == 2 and "(HTTP 404)" in missing[2]

    capture = body["capture"]
    lines = out.splitlines()
    assert lines[0] == "digits: serving version 1, trigger activate"
    assert lines[1] == (
        f"capture: {capture['held']:,} of {capture['capacity']:,} samples held "
        f"({capture['seen']:,} seen)"
    )
    assert lines[2].startswith(f"alarm: {'ringing' if body['alarmed'] else 'quiet'} ")
    assert lines[3] == "deciding: no; watching: no"
    (decision,) = body["decisions"]
    rows = table_rows(out)
    assert rows[decision["at"]] == [
        decision["at"],
        "rejected",
        "1 -> -",
        "; ".join(decision["reasons"]),
    ]
    assert f"label shift test of the decision at {decision['at']}:" in out
    for shift in decision["traffic"]["label_shift"]:
        assert rows[shift["layer"]] == [
            shift["layer"], f"{shift['drift']:.4f}", f"{shift['reweighted']:.4f}",
            "yes" if shift["explained"] else "no",
        ]  # fmt: skip


def test_unreachable_server_and_missing_file_exit_codes(
    npy_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(capsys, "recalibrate", "digits", str(npy_file), "--url", url)
    assert code == 1
    assert f"cannot reach {url}" in err
    code, _, err = run_cli(capsys, "recalibrate", "digits", str(tmp_path / "no.npy"), "--url", url)
    assert code == 2
    assert "cannot read" in err


def test_client_imports_no_serving_stack() -> None:
    code = (
        "import sys, service.__main__, service.cli.client.commands; "
        "print(sorted({'fastapi', 'torch', 'onnxruntime', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- pure functions


def test_format_progress() -> None:
    line = format_progress(1_000_000, 2_000_000, 0.5, width=10)
    assert line == "[#####.....]  50.0%  1.0/2.0 MB  2.0 MB/s"
    assert format_progress(0, 0, 0.0, width=4) == "[####] 100.0%  0.0/0.0 MB  -- MB/s"
    assert format_summary(3_500_000, 3_500_000, 2.0) == "sent 3.5 MB in 2.0 s (1.8 MB/s)"
    assert format_summary(1_000_000, 3_500_000, 0.0) == "sent 1.0 of 3.5 MB in 0.0 s (-- MB/s)"


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 10**10), st.data(), st.integers(1, 60))
def test_progress_bar_fill_is_proportional(total: int, data: st.DataObject, width: int) -> None:
    sent = data.draw(st.integers(0, total))
    bar = format_progress(sent, total, 1.0, width).split("]")[0][1:]
    assert len(bar) == width
    assert bar.count("#") == int(sent / total * width)
    assert bar == "#" * bar.count("#") + "." * bar.count(".")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_on_a_terminal_redraws_at_most_every_interval() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(4_000_000, stream, interactive=True, interval=0.1, clock=clock)
    for sent, now in ((1_000_000, 0.05), (2_000_000, 0.10), (3_000_000, 0.2), (4_000_000, 0.4)):
        clock.now = now
        bar.update(sent)
    bar.close()
    frames = stream.getvalue().split("\r")[1:]
    assert [frame.rstrip() for frame in frames] == [
        format_progress(1_000_000, 4_000_000, 0.05),
        format_progress(3_000_000, 4_000_000, 0.2),  # 2 MB came within 0.1 s of the last draw
        format_progress(4_000_000, 4_000_000, 0.4),  # close() does not draw it twice
    ]
    assert frames[-1].endswith("\n")
    assert len({len(frame.rstrip("\n")) for frame in frames}) == 1  # shorter lines are padded


def test_progress_bar_elsewhere_writes_one_summary_line() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(2_000_000, stream, interactive=False, clock=clock)
    clock.now = 1.0
    bar.update(2_000_000)
    bar.abandon()
    bar.close()
    assert stream.getvalue() == "sent 2.0 MB in 1.0 s (2.0 MB/s)\n"


REPORT: dict[str, Any] = {
    "model": "m",
    "source_version": "3",
    "version": "4",
    "activated": True,
    "parameters": {"mode": "population", "batch_size": 32, "prior": 0.0, "momentum": None},
    "samples": 100,
    "samples_used": 96,
    "batches": 3,
    "tail": {"samples": 4, "used": False, "policy": "..."},
    "duration_seconds": 1.23456,
    "bytes": 1000,
    "layers": [
        {
            "name": "features.0.bn",
            "kind": "BatchNorm",
            "channels": 128,
            "drift_before": {"drift": 1.5, "mean_shift": 0.25, "log_var_ratio": -2.0,
                             "worst_channel": 7, "worst_channel_drift": 3.125},
            "drift_after": {"drift": 0.00012, "mean_shift": 1e-17, "log_var_ratio": 0.5,
                            "worst_channel": 1, "worst_channel_drift": 0.001},
        },
        {
            "name": "bn",
            "kind": "InstanceNorm",
            "channels": 3,
            "drift_before": {"drift": 0.1, "mean_shift": 0.2, "log_var_ratio": 0.3,
                             "worst_channel": 0, "worst_channel_drift": 0.4},
            "drift_after": {"drift": 0.01, "mean_shift": 0.02, "log_var_ratio": 0.03,
                            "worst_channel": 2, "worst_channel_drift": 0.04},
        },
    ],
}  # fmt: skip


def test_format_report() -> None:
    lines = format_report(REPORT).splitlines()
    assert lines[:3] == [
        "m: version 3 -> 4 (activated)",
        "samples: 96 used of 100 received, 3 batches of 32, tail of 4 dropped; 1.235 s",
        "mode: population, prior 0.0, layers: all",
    ]
    rows = table_rows("\n".join(lines[5:]))
    assert rows["features.0.bn"] == [
        "features.0.bn", "BatchNorm", "128", "1.5000 -> 0.0001", "0.2500 -> 0.0000",
        "-2.0000 -> 0.5000", "#7 3.1250",
    ]  # fmt: skip
    assert rows["bn"][1:4] == ["InstanceNorm", "3", "0.1000 -> 0.0100"]
    assert len({len(line) for line in lines[5:]}) == 1  # right-aligned to one width

    dry = format_report({**REPORT, "version": None, "activated": False})
    assert dry.splitlines()[0] == "m: version 3 -> none (dry run, nothing written)"
    kept = format_report({**REPORT, "activated": False, "tail": {"samples": 4, "used": True}})
    assert kept.splitlines()[0] == (
        "m: version 3 -> 4 (not activated; to serve it: bnserve activate m 4)"
    )
    assert "tail of 4 used" in kept
    whole = format_report({**REPORT, "samples": 96, "tail": {"samples": 0, "used": False}})
    assert "3 batches of 32, no partial tail;" in whole


def test_format_table_alignment() -> None:
    table = format_table(["a", "bb", "n"], [["xyz", "q", "1"], ["x", "qq", "123"]], left=2)
    assert table.splitlines() == [
        "a    bb    n",
        "---  --  ---",
        "xyz  q     1",
        "x    qq  123",
    ]


def test_format_versions() -> None:
    provenance = {
        "source_version": "1",
        "created": "2026-01-01T00:00:00+00:00",
        "parameters": {"mode": "ema"},
        "samples": 500,
        "batches": 7,
    }
    listing = {
        "name": "m",
        "active": "2",
        "versions": [
            {"version": "1", "active": False, "provenance": None},
            {"version": "2", "active": True, "provenance": provenance},
        ],
    }
    lines = format_versions(listing).splitlines()
    assert lines[0] == "m: 2 versions, active 2"
    rows = table_rows("\n".join(lines[2:]))
    assert rows["1"] == ["1", "-", "-", "-", "-"]
    assert rows["2"] == ["2", "*", "1", "2026-01-01T00:00:00+00:00", "ema", "500 in 7 batches"]


def test_format_adaptation() -> None:
    settings = {"trigger": "propose", "threshold": 3.0, "min_drift": 0.25, "min_samples": 512}
    body: dict[str, Any] = {
        "name": "m",
        "version": "2",
        "settings": settings,
        "capture": None,
        "alarmed": True,
        "deciding": True,
        "watching": {"version": "2", "previous": "1"},
        "decisions": [],
    }
    assert format_adaptation(body).splitlines() == [
        "m: serving version 2, trigger propose",
        "capture: none (capture = 0)",
        "alarm: ringing (drift / baseline >= 3.0 and drift >= 0.25, after 512 samples)",
        "deciding: yes; watching: version 2 (back to 1 unless its drift settles)",
        "",
        "no decision yet",
    ]
    shift = {"layer": "bn1", "drift": 0.5, "reweighted": 0.45, "explained": False}
    body["decisions"] = [
        {"at": "t2", "outcome": "proposed", "source_version": 1, "version": 3,
         "reasons": ["alarm on bn1", "proposed"], "traffic": None},
        {"at": "t1", "outcome": "rejected", "source_version": 1, "version": 2,
         "reasons": ["holdout"], "traffic": {"label_shift": [shift]}},
    ]  # fmt: skip
    text = format_adaptation(body)
    rows = table_rows(text)
    assert rows["t2"] == ["t2", "proposed", "1 -> 3", "alarm on bn1; proposed"]
    assert rows["t1"] == ["t1", "rejected", "1 -> 2", "holdout"]
    assert text.count("label shift test") == 1  # under the rejection only
    assert rows["bn1"] == ["bn1", "0.5000", "0.4500", "no"]


def test_request_building() -> None:
    assert content_type_for(Path("a/x.NPY")) == "application/x-npy"
    assert content_type_for(Path("x.jsonl")) == content_type_for(Path("x.ndjson"))
    assert content_type_for(Path("x.ndjson")) == "application/x-ndjson"
    assert content_type_for(Path("x.bin")) == "application/octet-stream"
    assert recalibration_query() == {}
    assert recalibration_query(mode="ema", momentum=0.1, dry_run=True, activate=False) == {
        "mode": "ema",
        "momentum": "0.1",
        "dry_run": "true",
        "activate": "false",
    }
    endpoint = Endpoint.parse("https://host:9/prefix/")
    assert endpoint.target("/v2/x", {"layers": "a*,b"}) == "/prefix/v2/x?layers=a%2A%2Cb"
    assert str(Endpoint.parse("host:8000")) == "http://host:8000"
    with pytest.raises(UsageError):
        Endpoint.parse("ftp://host")


def test_client_and_server_agree_on_the_recalibration_parameters() -> None:
    """The client imports nothing of the server (it starts without the serving stack), so it
    spells the parameters out itself: they must be the server's names, defaults and modes."""
    client = inspect.signature(recalibration_query).parameters
    server = dataclasses.fields(RecalibrationParams)
    assert list(client) == [field.name for field in server]
    assert [p.default for p in client.values()] == [field.default for field in server]
    assert CLIENT_MODES == MODES


def test_file_chunks_report_bytes_taken() -> None:
    data = bytes(range(256)) * 41
    seen: list[int] = []
    chunks = list(file_chunks(io.BytesIO(data), seen.append, size=1000))
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == [1000] * 10 + [496]
    assert seen == [min(1000 * (i + 1), len(data)) for i in range(11)]


def test_error_messages_and_exit_codes() -> None:
    assert error_message(400, "Bad Request", b'{"error": "bad shape"}') == "bad shape (HTTP 400)"
    assert error_message(502, "Bad Gateway", b"<html>oops</html>") == "<html>oops</html> (HTTP 502)"
    assert error_message(503, "Service Unavailable", b"") == "Service Unavailable (HTTP 503)"
    assert [ClientError("x", s).exit_code for s in (400, 404, 499, 500, 503, None)] == [
        2,
        2,
        2,
        1,
        1,
        1,
    ]
    assert UsageError("x").exit_code == 2
