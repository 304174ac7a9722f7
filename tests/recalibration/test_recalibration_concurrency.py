"""Recalibration next to serving: inference keeps answering, a second recalibration of the
model gets 409, and a client that disconnects midway writes nothing (in process and through
a real socket to ``bnserve serve``)."""

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.examples.data import corrupt, load_digits_split
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, LiveServer, make_client, start_server
from tests.helpers import infer_body, output_of
from tests.recalibration.recalibration_support import (
    ADMIN,
    NPY,
    npy_body,
    post_chunks,
    recalibrate,
    served_logits,
    tree_snapshot,
)

X_SHIFT = corrupt(load_digits_split()[2], "contrast", 5)
BODY = npy_body(X_SHIFT)
PROBE = X_SHIFT[:8]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", root / "digits")
    return root


def test_inference_answers_and_a_second_recalibration_gets_409_while_one_runs(
    repo: Path,
) -> None:
    chunks = [BODY[i : i + 8192] for i in range(0, len(BODY), 8192)]  # 23 chunks, ~1 s
    sent: list[int] = []
    result: dict[str, httpx.Response] = {}
    with make_client(repo) as client:
        original = served_logits(client, "digits", PROBE)

        def upload() -> None:
            result["first"] = post_chunks(
                client,
                "/v2/models/digits/recalibrate",
                chunks,
                ADMIN | {"Content-Type": NPY},
                delay=0.04,
                on_chunk=sent.append,
            )

        thread = threading.Thread(target=upload)
        thread.start()
        deadline = time.monotonic() + 30
        while len(sent) < 2 and time.monotonic() < deadline:  # chunk 0 consumed: it runs
            time.sleep(0.005)
        busy = recalibrate(client, "digits", npy_body(X_SHIFT[:128]))
        busy_while_streaming = len(sent) < len(chunks)
        answered = 0
        while len(sent) < len(chunks) - 2 and thread.is_alive():
            assert np.array_equal(served_logits(client, "digits", PROBE), original)
            answered += 1
        thread.join(timeout=30)
        assert not thread.is_alive()

        assert answered >= 5, f"only {answered} inferences answered during the upload"
        assert busy_while_streaming
        assert busy.status_code == 409, busy.text
        assert "already running" in busy.json()["error"]
        assert result["first"].status_code == 200, result["first"].text
        assert result["first"].json()["version"] == "2"
        # The lock is released: the next recalibration runs.
        assert recalibrate(client, "digits", npy_body(X_SHIFT[:128])).status_code == 200
        assert sorted(p.name for p in (repo / "digits").iterdir() if p.name.isdigit()) == [
            "1",
            "2",
            "3",
        ]


def test_a_disconnect_midway_writes_nothing_in_process(repo: Path) -> None:
    """The ASGI server reports the disconnect while the body is half read."""
    before = tree_snapshot(repo)
    half = len(BODY) // 2
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": BODY[: half // 2], "more_body": True},
        {"type": "http.request", "body": BODY[half // 2 : half], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []
    with make_client(repo) as client:

        async def call() -> None:
            async def receive() -> dict[str, Any]:
                return messages.pop(0)

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v2/models/digits/recalibrate",
                "raw_path": b"/v2/models/digits/recalibrate",
                "query_string": b"",
                "root_path": "",
                "headers": [
                    (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
                    (b"content-type", NPY.encode()),
                    (b"content-length", str(len(BODY)).encode()),
                ],
                "client": ("127.0.0.1", 1234),
                "server": ("testserver", 80),
            }
            await client.app(scope, receive, send)  # type: ignore[arg-type]

        assert client.portal is not None
        client.portal.call(call)
        assert not messages  # the app read up to the disconnect
        assert tree_snapshot(repo) == before
        # Not stuck as "running": the model recalibrates again.
        assert recalibrate(client, "digits", npy_body(X_SHIFT[:128])).status_code == 200
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499


@pytest.fixture
def live(repo: Path, tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(repo, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


def _raw_post_half(server: LiveServer) -> None:
    """Headers announcing the whole body, half the body, then close the socket."""
    head = (
        "POST /v2/models/digits/recalibrate HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\n"
        f"Content-Type: {NPY}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + BODY[: len(BODY) // 2])
        time.sleep(0.3)  # let the server parse and run what it got


def test_a_client_that_closes_the_socket_midway_writes_nothing(
    live: LiveServer, repo: Path
) -> None:
    before = tree_snapshot(repo)
    _raw_post_half(live)
    # The abandoned job must end (no 409 forever) without writing: a dry run tells when.
    deadline = time.monotonic() + 20
    while True:
        probe = httpx.post(
            f"{live.url}/v2/models/digits/recalibrate?dry_run=true",
            content=npy_body(X_SHIFT[:128]),
            headers=ADMIN | {"Content-Type": NPY},
            timeout=10,
        )
        if probe.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert probe.status_code == 200, probe.text
    assert "recalibration of digits abandoned" in live.log.read_text()
    after = tree_snapshot(repo)
    assert after == before, "\n".join(sorted(set(after) ^ set(before)))
    assert not list((repo / "digits").glob(".tmp-*"))
    # The server still serves and recalibrates.
    infer = httpx.post(f"{live.url}/v2/models/digits/infer", content=infer_body(PROBE))
    assert infer.status_code == 200
    assert output_of(infer.json()).shape == (8, 10)
    done = httpx.post(
        f"{live.url}/v2/models/digits/recalibrate",
        content=BODY,
        headers=ADMIN | {"Content-Type": NPY},
        timeout=30,
    )
    assert done.status_code == 200 and done.json()["version"] == "2"
