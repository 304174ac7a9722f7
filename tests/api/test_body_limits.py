"""Inference body limits against a real server: each model's largest valid body, refused from
the declared ``Content-Length`` before a byte is read (``service.protocol.limits``), chunked
bodies cut off as they cross it, and the budget of body bytes held at once (503 past it).

Requests go out over raw sockets, so a test can send the headers alone, or part of a body,
and see what the server does before the rest arrives.
"""

import json
import select
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from service.bench.flood import json_body, measure_flood
from service.bench.server import BenchServer
from service.config import load_model_config
from service.datatypes import DTYPES
from service.protocol.limits import ENVELOPE_BYTES, VALUE_BYTES, body_bounds
from tests.conftest import BUNDLED_MODELS, LiveServer, start_server
from tests.helpers import infer_body, sample_inputs
from tests.raw_http import Answer, chunk, open_request, post, read_answer

DIGITS = body_bounds("digits", load_model_config(BUNDLED_MODELS / "digits" / "config.toml"))
INFER = "/v2/models/digits/infer"
PREDICT = "/v1/models/digits:predict"
LONGEST_FLOAT = -2.2250738585072014e-308
"""Its JSON text is the longest a float64 has (24 characters); it is a valid, finite FP32 (-0)."""
PROMPT = 5.0
"""Seconds within which a refusal that needs no body must come back (it comes in ms)."""


def _digits_repository(root: Path) -> Path:
    models = root / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", models / "digits")
    return models


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("body-limits")
    live = start_server(_digits_repository(root), root / "server.log")
    try:
        yield live
    finally:
        live.stop()


@pytest.mark.parametrize("datatype", sorted(DTYPES))
def test_the_widest_json_value_of_every_datatype_fits_its_bound(datatype: str) -> None:
    dtype = DTYPES[datatype]
    if dtype.kind == "f":  # any double: clients send float32 values widened
        extremes: list[object] = [-np.finfo(np.float64).tiny, -np.finfo(np.float64).max, -1e-7]
    elif dtype.kind == "b":
        extremes = [False, True]
    else:
        extremes = [int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)]
    widest = max(len(json.dumps(value)) for value in extremes)
    assert widest == VALUE_BYTES[datatype]


def _binary_request(batch: int) -> tuple[bytes, bytes]:
    """The JSON header and the raw bytes of a binary-tensor request of ``batch`` samples."""
    raw = sample_inputs("digits", batch).astype("<f4").tobytes()
    entry = {"name": "input", "datatype": "FP32", "shape": [batch, 1, 8, 8]}
    header = {"inputs": [entry | {"parameters": {"binary_data_size": len(raw)}}]}
    return json.dumps(header).encode(), raw


def _refused_unread(server: LiveServer, path: str, headers: dict[str, str], sent: bytes) -> Answer:
    """The answer to ``headers`` declaring more than is ever sent (``sent`` only): it must be
    a prompt 413, which the server can give only without waiting for the body."""
    started = time.monotonic()
    with open_request(server.port, "POST", path, headers, timeout=PROMPT) as sock:
        sock.sendall(sent)
        answer = read_answer(sock)
    assert time.monotonic() - started < PROMPT
    assert answer.status == 413, answer.body
    return answer


def test_the_largest_binary_request_is_served_and_one_byte_more_is_refused_unread(
    server: LiveServer,
) -> None:
    header, raw = _binary_request(64)
    assert len(raw) == DIGITS.binary  # the bound is exact: every value of a full batch
    headers = {"Inference-Header-Content-Length": str(len(header))}
    served = post(server.port, INFER, header + raw, headers)
    assert served.status == 200, served.body
    limit = len(header) + len(raw)
    declared = headers | {"Content-Length": str(limit + 1)}
    error = _refused_unread(server, INFER, declared, header).error()
    assert f"request body of {limit + 1} bytes is over the limit of {limit} bytes" in error
    assert "model 'digits'" in error and f"JSON header of {len(header)} bytes" in error


def test_a_header_length_over_the_json_bound_is_refused_unread(server: LiveServer) -> None:
    headers = {
        "Inference-Header-Content-Length": str(DIGITS.json + 1),
        "Content-Length": str(DIGITS.json + 1 + DIGITS.binary),
    }
    error = _refused_unread(server, INFER, headers, b"").error()
    assert f"Inference-Header-Content-Length of {DIGITS.json + 1} bytes" in error
    assert "model 'digits'" in error


def _longest_values(batch: int) -> list[object]:
    """A digits batch, fully nested, every value the longest float text."""
    sample = np.full((1, 8, 8), LONGEST_FLOAT).tolist()
    return [sample for _ in range(batch)]


def test_the_json_bound_holds_the_longest_valid_request_and_refuses_past_it_unread(
    server: LiveServer,
) -> None:
    data = _longest_values(64)
    entry = {"name": "input", "datatype": "FP32", "shape": [64, 1, 8, 8], "data": data}
    body = json.dumps({"id": "longest", "inputs": [entry]}).encode()  # ", " separators
    assert len(body) <= DIGITS.json
    assert len(body) > 0.98 * (DIGITS.json - ENVELOPE_BYTES)  # tight, but for the envelope
    served = post(server.port, INFER, body)
    assert served.status == 200, served.body
    huge = {"Content-Length": str(48 * 1024 * 1024)}  # under the global max_body_bytes
    error = _refused_unread(server, INFER, huge, b'{"inputs": [').error()
    assert f"over the limit of {DIGITS.json} bytes" in error
    assert "largest valid JSON request for model 'digits'" in error


def test_the_v1_bound_holds_the_longest_instances_and_refuses_past_it_unread(
    server: LiveServer,
) -> None:
    instances = [{"input": sample} for sample in _longest_values(64)]
    body = json.dumps({"instances": instances}).encode()
    assert len(body) <= DIGITS.v1
    assert len(body) > 0.98 * (DIGITS.v1 - ENVELOPE_BYTES)
    served = post(server.port, PREDICT, body)
    assert served.status == 200, served.body
    declared = {"Content-Length": str(DIGITS.v1 + 1)}
    error = _refused_unread(server, PREDICT, declared, b"").error()
    assert f"over the limit of {DIGITS.v1} bytes" in error
    assert "V1 request for model 'digits'" in error


def test_a_chunked_body_is_refused_as_it_crosses_the_bound(server: LiveServer) -> None:
    piece = b" " * 16384  # JSON whitespace: only its length matters
    headers = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    sent = 0
    with open_request(server.port, "POST", INFER, headers, timeout=PROMPT) as sock:
        while sent < 16 * DIGITS.json:
            sock.sendall(chunk(piece))
            sent += len(piece)
            if select.select([sock], [], [], 0.01)[0]:  # an answer before the body's end
                break
        answer = read_answer(sock)
    assert answer.status == 413, answer.body
    assert sent < DIGITS.json + 1024 * 1024  # the rest was never needed
    error = answer.error()
    assert f"over the limit of {DIGITS.json} bytes" in error and "model 'digits'" in error


@contextmanager
def _held(port: int, body: bytes) -> Iterator[None]:
    """A request whose body is half sent while the ``with`` block runs, then completed."""
    with open_request(port, "POST", INFER, {"Content-Length": str(len(body))}) as sock:
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.3)  # for the server to read the headers and take the body's share
        yield
        sock.sendall(body[len(body) // 2 :])
        answer = read_answer(sock)
    assert answer.status == 200, answer.body


def test_bodies_over_the_inflight_budget_get_503_until_the_others_finish(tmp_path: Path) -> None:
    body = infer_body(sample_inputs("digits", 64))
    budget = 3 * len(body) // 2  # room for one body, not two
    models = _digits_repository(tmp_path)
    live = start_server(models, tmp_path / "server.log", BNSERVE_MAX_INFLIGHT_BYTES=str(budget))
    try:
        with _held(live.port, body):
            refused = post(live.port, INFER, body)
            assert refused.status == 503, refused.body
            assert refused.headers["retry-after"] == "1"
            assert "max_inflight_bytes" in refused.error() and str(budget) in refused.error()
            pieces = b"".join(chunk(body[i : i + 4096]) for i in range(0, len(body), 4096))
            with open_request(live.port, "POST", INFER, {"Transfer-Encoding": "chunked"}) as sock:
                sock.sendall(pieces + chunk(b""))  # counted as it arrives
                assert read_answer(sock).status == 503
            assert post(live.port, INFER, b" " * (len(body) // 4)).status == 400  # fits
        for _ in range(2):  # every share was given back: one full body at a time passes
            assert post(live.port, INFER, body).status == 200
        too_big = post(live.port, INFER, b" " * (budget + 1))  # could never fit: 413
        assert too_big.status == 413 and "max_inflight_bytes" in too_big.error()
    finally:
        live.stop()


def test_a_flood_of_large_json_bodies_leaves_memory_alone(tmp_path: Path) -> None:
    """The benchmark's case g, scaled down: 16 concurrent 16 MiB bodies, declared and chunked."""
    body = json_body(16 * 1024 * 1024)
    with BenchServer(_digits_repository(tmp_path), tmp_path / "server.log") as server:
        assert post(server.port, INFER, infer_body(sample_inputs("digits", 64))).status == 200
        for chunked in (False, True):
            flood = measure_flood(server, INFER, body, 16, chunked)
            assert flood.refused and set(flood.statuses) == {413}, flood.summary()
            assert flood.growth_mib <= 32, flood.summary()
