"""Only a write of ``active`` changes what is served.

A repository without ``active`` serves its highest version; the server writes that choice once,
at load. A version written later without activation (``activate=false``, another replica's
write) is never served for being the highest: not by the server that wrote it, not by a replica
that polls the shared repository, not after a restart.
"""

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.examples import corrupt, load_digits_split
from tests.conftest import ADMIN_TOKEN, LiveServer, start_server
from tests.helpers import infer_body, output_of

POLL = 0.3
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBE = load_digits_split()[2][:16]


def _contrast_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, corrupt(load_digits_split()[2], "contrast", 5))
    return buffer.getvalue()


def _served(server: LiveServer) -> tuple[str, np.ndarray]:
    response = httpx.post(f"{server.url}/v2/models/digits/infer", content=infer_body(PROBE))
    assert response.status_code == 200, response.text
    return response.json()["model_version"], output_of(response.json())


def _recalibrate_without_activation(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.url}/v2/models/digits/recalibrate",
        params={"activate": "false"},
        content=_contrast_npy(),
        headers=ADMIN | {"Content-Type": "application/x-npy"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "2" and response.json()["activated"] is False


def _active(server: LiveServer) -> str:
    listing = httpx.get(f"{server.url}/v2/models/digits/versions").json()
    marked = [entry["version"] for entry in listing["versions"] if entry["active"]]
    assert marked == [listing["active"]]
    return str(listing["active"])


def _servers(repo: Path, logs: Path, count: int) -> list[LiveServer]:
    env = {"BNSERVE_POLL_INTERVAL": str(POLL), "BNSERVE_ADMIN_TOKEN": ADMIN_TOKEN}
    return [start_server(repo, logs / f"server{i}.log", **env) for i in range(count)]


@pytest.mark.parametrize("pointer", ["missing", "present"])
@pytest.mark.parametrize("replicas", [1, 2])
def test_activate_false_never_serves_the_new_version(
    model_repo: Path, tmp_path: Path, pointer: str, replicas: int
) -> None:
    active = model_repo / "digits" / "active"
    if pointer == "missing":
        active.unlink()
    servers = _servers(model_repo, tmp_path, replicas)
    try:
        assert active.read_text() == "1\n"  # resolved once, at load, and written
        before = _served(servers[0])[1]
        _recalibrate_without_activation(servers[0])
        time.sleep(6 * POLL)  # several polls of every replica
        for server in servers:
            version, output = _served(server)
            assert version == "1" and _active(server) == "1"
            np.testing.assert_array_equal(output, before)
        assert active.read_text() == "1\n"
    finally:
        for server in servers:
            server.stop()
    restarted = _servers(model_repo, tmp_path, 1)[0]  # a restart keeps what was written
    try:
        assert _served(restarted)[0] == "1" and _active(restarted) == "1"
    finally:
        restarted.stop()


def test_writing_active_is_what_switches(model_repo: Path, tmp_path: Path) -> None:
    (model_repo / "digits" / "active").unlink()
    (first, second) = _servers(model_repo, tmp_path, 2)
    try:
        _recalibrate_without_activation(first)
        response = httpx.post(f"{second.url}/v2/models/digits/versions/2/activate", headers=ADMIN)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 10 * POLL + 2
        while _served(first)[0] != "2":
            assert time.monotonic() < deadline, "the first replica never followed"
            time.sleep(0.05)
        np.testing.assert_array_equal(_served(first)[1], _served(second)[1])
    finally:
        first.stop()
        second.stop()
