"""``bnserve.v1.Recalibration/Recalibrate`` against ``POST .../recalibrate`` on one server: the
same bytes give bit-identical statistics and the same report, and every refusal has the HTTP
route's message (the status code mapped to gRPC) and leaves the repository byte for byte as
it was."""

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.examples.data import corrupt, load_digits_split
from service.grpc.generated.bnserve.v1 import recalibration_pb2_grpc as pb_grpc
from tests.conftest import BUNDLED_MODELS
from tests.grpc.recalibration_grpc_support import (
    ADMIN_METADATA,
    Answer,
    call,
    header,
    messages,
    recalibrate,
    serving_both,
)
from tests.recalibration.recalibration_support import (
    ADMIN,
    BODIES,
    NDJSON,
    NPY,
    RAW,
    assert_stats_identical,
    file_statistics,
    npy_body,
    post_chunks,
    tree_snapshot,
)
from tests.recalibration.recalibration_support import recalibrate as http_recalibrate

MODELS = ("digits", "digits_torch")
X_SHIFT = corrupt(load_digits_split()[2], "blur", 5)
SMALL = npy_body(X_SHIFT[:128])
# What a report says about when and how fast, and which version number it got: the rest must
# be equal between the transports.
VARYING = {"created", "duration_seconds", "version"}

Served = tuple[TestClient, str, Path]


def _served(tmp: Path, **settings: object) -> Iterator[Served]:
    repo = tmp / "models"
    for model in MODELS:
        shutil.copytree(BUNDLED_MODELS / model, repo / model)
    with serving_both(repo, **settings) as (client, target):
        yield client, target, repo


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _served(tmp_path_factory.mktemp("grpc-recalibration"))


def _report(text: str) -> dict[str, Any]:
    report: dict[str, Any] = orjson.loads(text)
    return {key: value for key, value in report.items() if key not in VARYING}


@pytest.mark.parametrize("media", [NPY, RAW, NDJSON])
@pytest.mark.parametrize("model", MODELS)
def test_statistics_are_bit_identical_to_the_same_bytes_over_http(
    served: Served, model: str, media: str
) -> None:
    client, target, repo = served
    body = BODIES[media](X_SHIFT)
    over_http = http_recalibrate(client, model, body, media, activate=False)
    assert over_http.status_code == 200, over_http.text
    # Chunks of an odd size: cut inside samples, lines and the npy header alike.
    answer = recalibrate(target, model, body, media, chunk=7777, activate=False)
    assert answer.code == grpc.StatusCode.OK, answer.details
    assert answer.report_json is not None
    over_grpc = orjson.loads(answer.report_json)

    http_version, grpc_version = over_http.json()["version"], over_grpc["version"]
    assert int(grpc_version) == int(http_version) + 1
    assert over_grpc["activated"] is False
    grpc_stats = file_statistics(repo / model / grpc_version)
    assert_stats_identical(grpc_stats, file_statistics(repo / model / http_version))
    source = file_statistics(repo / model / "1")
    assert all(not np.array_equal(grpc_stats[n][0], source[n][0]) for n in source)
    assert _report(answer.report_json) == _report(over_http.text)
    written = orjson.loads((repo / model / grpc_version / "recalibration.json").read_bytes())
    assert {k: v for k, v in written.items() if k != "created"} == {
        k: v for k, v in over_grpc.items() if k not in {"created", "version", "activated"}
    }


def _refused(
    served: Served, answer: Answer, code: grpc.StatusCode, message: str, before: dict[str, str]
) -> None:
    assert (answer.code, answer.details) == (code, message)
    assert tree_snapshot(served[2]) == before, "a refused call changed the repository"


def _http_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]
    return message


BAD_PARAMETERS: dict[str, dict[str, Any]] = {
    "batch size too small": {"batch_size": 1},
    "two values out of range": {"batch_size": 1_000_000, "momentum": 2.0, "mode": "ema"},
    "negative prior": {"prior": -1.0},
    "unknown mode": {"mode": "median"},
    "momentum without ema": {"momentum": 0.5},
    "prior with ema": {"mode": "ema", "prior": 10.0},
    "no layer matches": {"layers": "nothing*"},
}


@pytest.mark.parametrize("params", BAD_PARAMETERS.values(), ids=BAD_PARAMETERS)
def test_a_bad_parameter_gets_the_query_strings_message(
    served: Served, params: dict[str, Any]
) -> None:
    client, target, repo = served
    http_message = _http_error(http_recalibrate(client, "digits", SMALL, NPY, **params), 400)
    before = tree_snapshot(repo)
    answer = recalibrate(target, "digits", SMALL, NPY, **params)
    # A range check names the field where the request carries it: the query string over
    # HTTP, the header's parameters over gRPC.
    expected = http_message.replace("query.", "parameters.")
    _refused(served, answer, grpc.StatusCode.INVALID_ARGUMENT, expected, before)


def test_a_wrong_content_type_gets_the_http_message(served: Served) -> None:
    client, target, repo = served
    http_message = _http_error(http_recalibrate(client, "digits", SMALL, "text/csv"), 415)
    before = tree_snapshot(repo)
    answer = recalibrate(target, "digits", SMALL, "text/csv")
    _refused(served, answer, grpc.StatusCode.INVALID_ARGUMENT, http_message, before)
    answer = recalibrate(target, "digits", SMALL, None)
    expected = (
        "the header's content_type is required: one of "
        "application/x-npy, application/octet-stream, application/x-ndjson"
    )
    _refused(served, answer, grpc.StatusCode.INVALID_ARGUMENT, expected, before)


def test_an_unknown_model_or_version_gets_the_http_message(served: Served) -> None:
    client, target, repo = served
    before = tree_snapshot(repo)
    for model, version, status, code in [
        ("nope", "", 404, grpc.StatusCode.NOT_FOUND),
        ("digits", "9", 404, grpc.StatusCode.NOT_FOUND),
        ("digits", "x1", 400, grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        response = client.post(
            f"{path}/recalibrate", content=SMALL, headers=ADMIN | {"Content-Type": NPY}
        )
        answer = call(target, messages(header(model, NPY, version=version), [SMALL]))
        _refused(served, answer, code, _http_error(response, status), before)


def test_a_missing_or_wrong_token_is_unauthenticated(served: Served) -> None:
    client, target, repo = served
    before = tree_snapshot(repo)
    wrong = {"Authorization": "Bearer not-the-token", "Content-Type": NPY}
    http_message = _http_error(
        client.post("/v2/models/digits/recalibrate", content=SMALL, headers=wrong), 401
    )
    requests = messages(header("digits", NPY), [SMALL])
    answer = call(target, requests, metadata=(("authorization", "Bearer not-the-token"),))
    _refused(served, answer, grpc.StatusCode.UNAUTHENTICATED, http_message, before)
    http_message = _http_error(
        client.post("/v2/models/digits/recalibrate", content=SMALL, headers={}), 401
    )
    answer = call(target, messages(header("digits", NPY), [SMALL]), metadata=())
    _refused(served, answer, grpc.StatusCode.UNAUTHENTICATED, http_message, before)


def test_a_bad_first_message_or_a_second_header_is_refused(served: Served) -> None:
    _, target, repo = served
    before = tree_snapshot(repo)
    no_header = "the first message must carry the header (model_name, content_type, parameters)"
    for requests in (messages(None, [SMALL]), messages(None, [])):
        _refused(
            served, call(target, requests), grpc.StatusCode.INVALID_ARGUMENT, no_header, before
        )
    answer = call(target, messages(header("", NPY), [SMALL]))
    message = "the header's model_name is required"
    _refused(served, answer, grpc.StatusCode.INVALID_ARGUMENT, message, before)

    def twice() -> Iterator[Any]:
        yield from messages(header("digits", NPY), [SMALL[:1000]])
        yield from messages(header("digits", NPY), [SMALL[1000:]])

    message = "message 3: only the first message may carry a header"
    _refused(served, call(target, twice()), grpc.StatusCode.INVALID_ARGUMENT, message, before)


def test_a_bad_stream_gets_the_http_message(served: Served) -> None:
    """The parsers' own refusals (here a truncated sample) pass through unchanged."""
    client, target, repo = served
    truncated = SMALL[:-300]
    http_message = _http_error(http_recalibrate(client, "digits", truncated, NPY), 400)
    before = tree_snapshot(repo)
    answer = recalibrate(target, "digits", truncated, NPY, chunk=1000)
    _refused(served, answer, grpc.StatusCode.INVALID_ARGUMENT, http_message, before)


def test_a_stream_over_the_size_limit_is_resource_exhausted(tmp_path: Path) -> None:
    for served in _served(tmp_path, recalibration_max_bytes=20_000):
        client, target, repo = served
        # Chunked over HTTP, no Content-Length: the parser's limit, as over gRPC.
        response = post_chunks(
            client,
            "/v2/models/digits/recalibrate",
            [SMALL[i : i + 4096] for i in range(0, len(SMALL), 4096)],
            ADMIN | {"Content-Type": NPY},
        )
        http_message = _http_error(response, 413)
        before = tree_snapshot(repo)
        answer = recalibrate(target, "digits", SMALL, NPY, chunk=4096)
        _refused(served, answer, grpc.StatusCode.RESOURCE_EXHAUSTED, http_message, before)


def _stalled(first: list[Any], release: threading.Event) -> Iterator[Any]:
    """``first``, then nothing until ``release``: a client that stopped sending."""
    yield from first
    release.wait(30)


def test_an_idle_stream_is_deadline_exceeded_and_releases_the_model(tmp_path: Path) -> None:
    for served in _served(tmp_path, recalibration_idle_timeout=0.5):
        _, target, repo = served
        before = tree_snapshot(repo)
        release = threading.Event()
        stalls = [
            (
                list(messages(header("digits", NPY), [SMALL[:3000]])),
                "no byte of the body arrived for 0.5 s (recalibration_idle_timeout): "
                "recalibration abandoned, nothing written",
            ),
            (
                [],
                "no message arrived for 0.5 s (recalibration_idle_timeout): "
                "recalibration abandoned, nothing written",
            ),
        ]
        try:
            for first, message in stalls:
                answer = call(target, _stalled(first, release))
                _refused(served, answer, grpc.StatusCode.DEADLINE_EXCEEDED, message, before)
        finally:
            release.set()
        # The model's lock is released: the next recalibration runs.
        assert recalibrate(target, "digits", SMALL, NPY, dry_run=True).code == grpc.StatusCode.OK
        assert tree_snapshot(repo) == before


def _slow(body: bytes, sent: list[int], pause: float) -> Iterator[Any]:
    """``body`` in 8 KiB messages, ``pause`` seconds apart; ``sent`` counts them."""
    yield from messages(header("digits", NPY), [])
    for start in range(0, len(body), 8192):
        time.sleep(pause)
        sent.append(start)
        yield from messages(None, [body[start : start + 8192]])


def _wait_for(sent: list[int], count: int) -> None:
    deadline = time.monotonic() + 30
    while len(sent) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(sent) >= count, "the upload did not start"


def test_a_second_recalibration_while_one_runs_is_aborted(served: Served) -> None:
    client, target, repo = served
    body = npy_body(X_SHIFT)  # 23 messages of 8 KiB
    sent: list[int] = []
    result: dict[str, Answer] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("first", call(target, _slow(body, sent, 0.04)))
    )
    versions = {p.name for p in (repo / "digits").iterdir() if p.name.isdigit()}
    thread.start()
    _wait_for(sent, 2)
    http_busy = http_recalibrate(client, "digits", SMALL, NPY)
    busy = recalibrate(target, "digits", SMALL, NPY)
    still_streaming = len(sent) < 23
    thread.join(30)
    assert still_streaming
    assert (busy.code, busy.details) == (grpc.StatusCode.ABORTED, _http_error(http_busy, 409))
    assert result["first"].code == grpc.StatusCode.OK, result["first"].details
    assert result["first"].report_json is not None
    written = orjson.loads(result["first"].report_json)["version"]
    now = {p.name for p in (repo / "digits").iterdir() if p.name.isdigit()}
    assert now == versions | {written}  # the refused calls wrote nothing


def test_a_client_that_cancels_midway_writes_nothing(served: Served) -> None:
    _, target, repo = served
    before = tree_snapshot(repo)
    sent: list[int] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecalibrationStub(channel)
        future = stub.Recalibrate.future(
            _slow(npy_body(X_SHIFT), sent, 0.05), metadata=ADMIN_METADATA
        )
        _wait_for(sent, 4)  # the server is reading and running the stream
        assert future.cancel()
    # The abandoned run ends (no ABORTED forever) without writing: a dry run tells when.
    deadline = time.monotonic() + 20
    while True:
        probe = recalibrate(target, "digits", SMALL, NPY, dry_run=True)
        if probe.code != grpc.StatusCode.ABORTED or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert probe.code == grpc.StatusCode.OK, probe.details
    assert tree_snapshot(repo) == before
