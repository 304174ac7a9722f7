"""Limits and shutdown: request timeout (504), full queue (503), stalled recalibration upload
(408), SIGTERM during recalibration."""

import io
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from service.examples import load_digits_split
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, make_client, start_server
from tests.helpers import infer_body, sample_inputs
from tests.raw_http import open_request, read_answer

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_request_over_the_timeout_gets_504(model_repo: Path) -> None:
    with make_client(model_repo, request_timeout=1e-9) as client:
        response = client.post(
            "/v2/models/digits/infer", content=infer_body(sample_inputs("digits", 1))
        )
        assert response.status_code == 504
        assert "timeout" in response.json()["error"]


def test_a_full_queue_answers_503_with_retry_after(model_repo: Path, tmp_path: Path) -> None:
    config = model_repo / "digits" / "config.toml"
    config.write_text(config.read_text() + "\n[batching]\nmax_queue = 1\n")
    # Calls on the model's thread: an inline call (BNSERVE_INLINE_CALL_US) ends before the
    # event loop reads the next request, so a queue of 1 might never overflow.
    server = start_server(model_repo, tmp_path / "server.log", BNSERVE_INLINE_CALL_US="0")
    body = infer_body(sample_inputs("digits", 64))
    try:
        with httpx.Client(base_url=server.url, limits=httpx.Limits(max_connections=64)) as http:

            def call(_: int) -> httpx.Response:
                return http.post("/v2/models/digits/infer", content=body)

            refused: list[httpx.Response] = []
            for _ in range(10):  # a burst of 64 concurrent requests overflows a queue of 1
                with ThreadPoolExecutor(32) as pool:
                    responses = list(pool.map(call, range(64)))
                assert {r.status_code for r in responses} <= {200, 503}
                refused = [r for r in responses if r.status_code == 503]
                if refused:
                    break
    finally:
        server.stop()
    assert refused, "no request was refused"
    assert refused[0].headers["retry-after"] == "1"
    assert "queue is full" in refused[0].json()["error"]


def _slow_npy(samples: np.ndarray, pause: float) -> Iterator[bytes]:
    buffer = io.BytesIO()
    np.save(buffer, samples)
    body = buffer.getvalue()
    for start in range(0, len(body), 4096):
        yield body[start : start + 4096]
        time.sleep(pause)


def test_sigterm_aborts_a_recalibration_without_writing(model_repo: Path, tmp_path: Path) -> None:
    server = start_server(model_repo, tmp_path / "server.log")
    before = _tree(model_repo)
    samples = np.tile(load_digits_split()[2], (4, 1, 1, 1))  # ~740 KB, streamed over ~9 s
    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        result["response"] = httpx.post(
            f"{server.url}/v2/models/digits/recalibrate",
            content=_slow_npy(samples, 0.05),
            headers=ADMIN | {"Content-Type": "application/x-npy"},
            timeout=60,
        )

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(1.5)
    server.process.send_signal(signal.SIGTERM)
    thread.join(30)
    try:
        # uvicorn re-raises the signal once it has shut down gracefully
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    response = result["response"]
    assert response.status_code == 503, response.text
    assert "shutting down" in response.json()["error"]
    assert _tree(model_repo) == before


def test_a_stalled_recalibration_upload_gets_408_and_releases_the_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", models / "digits")
    server = start_server(models, tmp_path / "server.log", BNSERVE_RECALIBRATION_IDLE_TIMEOUT="1")
    buffer = io.BytesIO()
    np.save(buffer, load_digits_split()[2][:256])
    body = buffer.getvalue()
    path = "/v2/models/digits/recalibrate"
    headers = ADMIN | {"Content-Type": "application/x-npy"}
    try:
        before = _tree(models)
        fields = headers | {"Content-Length": str(len(body))}
        with open_request(server.port, "POST", path, fields, timeout=30) as sock:
            sock.sendall(body[: len(body) // 2])  # then nothing more
            started = time.monotonic()
            answer = read_answer(sock)
            waited = time.monotonic() - started
        assert answer.status == 408, answer.body
        assert "no byte of the body arrived for 1 s" in answer.error()
        assert "nothing written" in answer.error()
        assert 0.5 < waited < 20  # the idle timeout, not a client or socket timeout
        assert _tree(models) == before
        done = httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=60)
    finally:
        server.stop()
    assert done.status_code == 200, done.text  # the model's recalibration lock was released
    assert done.json()["version"] == "2"


def test_a_stalled_inference_body_gets_408_and_gives_its_budget_back(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", models / "digits")
    body = infer_body(sample_inputs("digits", 64))
    # Room for one body in flight: while the stalled one holds it, the next gets 503.
    env = {"BNSERVE_REQUEST_TIMEOUT": "1", "BNSERVE_MAX_INFLIGHT_BYTES": str(len(body) + 100)}
    server = start_server(models, tmp_path / "server.log", **env)
    path = "/v2/models/digits/infer"
    try:
        with open_request(server.port, "POST", path, {"Content-Length": str(len(body))}) as sock:
            sock.sendall(body[:100])  # then nothing more
            busy = httpx.post(f"{server.url}{path}", content=body)
            answer = read_answer(sock)
        after = httpx.post(f"{server.url}{path}", content=body)
    finally:
        server.stop()
    assert busy.status_code == 503 and "max_inflight_bytes" in busy.json()["error"]
    assert answer.status == 408, answer.body
    assert "did not arrive within 1.0 s" in answer.error() and "100 bytes" in answer.error()
    assert after.status_code == 200, after.text  # the stalled body's share was released
