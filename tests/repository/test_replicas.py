"""Two real server processes on one shared repository converge within the poll interval."""

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.examples import corrupt, load_digits_split
from tests.conftest import ADMIN_TOKEN, LiveServer, start_server
from tests.helpers import infer_body, output_of

POLL = 0.5
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBE = load_digits_split()[2][:16]


@pytest.fixture
def replicas(model_repo: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    env = {"BNSERVE_POLL_INTERVAL": str(POLL)}
    first = start_server(model_repo, tmp_path / "a.log", **env)
    try:
        second = start_server(model_repo, tmp_path / "b.log", **env)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def _served(server: LiveServer, model: str = "digits") -> tuple[str, np.ndarray]:
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", content=infer_body(PROBE))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], output_of(body)


def _within(seconds: float, condition: Callable[[], bool]) -> float:
    """Seconds until ``condition()`` holds; fails after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def test_a_recalibration_through_one_replica_is_served_by_the_other(
    replicas: tuple[LiveServer, LiveServer],
) -> None:
    first, second = replicas
    buffer = io.BytesIO()
    np.save(buffer, corrupt(load_digits_split()[2], "contrast", 5))
    response = httpx.post(
        f"{first.url}/v2/models/digits/recalibrate",
        content=buffer.getvalue(),
        headers=ADMIN | {"Content-Type": "application/x-npy"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "2"
    version, expected = _served(first)
    assert version == "2"
    waited = _within(POLL + 1.0, lambda: _served(second)[0] == "2")
    np.testing.assert_array_equal(_served(second)[1], expected)
    print(f"second replica served version 2 after {waited:.2f} s")

    # Rollback through the second replica propagates to the first.
    rollback = httpx.post(f"{second.url}/v2/models/digits/versions/1/activate", headers=ADMIN)
    assert rollback.status_code == 200, rollback.text
    _within(POLL + 1.0, lambda: _served(first)[0] == "1")
    np.testing.assert_array_equal(_served(first)[1], _served(second)[1])

    # And activation again, through the first.
    assert httpx.post(f"{first.url}/v2/models/digits/versions/2/activate", headers=ADMIN)
    _within(POLL + 1.0, lambda: _served(second)[0] == "2")
