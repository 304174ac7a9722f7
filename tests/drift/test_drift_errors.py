"""Failed drift taps: counted in the JSON, on the status page and in Prometheus, and retried
after a backoff that grows while they persist, instead of stopping drift monitoring for good.

The monitor tests run on a fake clock and run every job at once, so which batch is tapped is
exact; the served test makes the real tapped forward fail to load once.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import service.drift.factory
from service.backends.base import TappedForward
from service.config import ModelConfig
from service.drift import DriftCollector, DriftMonitor
from service.drift.failures import TapFailures
from service.examples.data import load_digits_split
from service.status_page import render_status
from tests.api.test_status_page import parse, section
from tests.conftest import BUNDLED_MODELS, make_client
from tests.drift.test_drift import (
    FakeClock,
    FakeTaps,
    InlineExecutor,
    batches,
    gaussian_reference,
    norm_layers,
)
from tests.helpers import infer_body


class FlakyFactory:
    """Creates the tapped forward, raising on its first ``failures`` calls."""

    def __init__(self, taps: FakeTaps, failures: int) -> None:
        self.taps, self.failures, self.calls = taps, failures, 0

    def __call__(self) -> FakeTaps:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(f"model file vanished (try {self.calls})")
        return self.taps


def exported_errors(monitor: DriftMonitor) -> float | None:
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: [("digits", 1, monitor)]))
    return registry.get_sample_value("bnserve_drift_errors_total", {"model": "digits"})


def errors_line(snapshot: dict[str, Any]) -> str:
    model = {"name": "digits", "version": "1", "versions": [], "drift": {"version": "1"}}
    model["drift"] |= snapshot
    lines = section(parse(render_status([model])).root, "digits").all("p", "drift-errors")
    return " ".join(line.content for line in lines)


def test_backoff_doubles_from_one_second_up_to_the_cap_and_a_success_resets_it() -> None:
    failures = TapFailures(first_delay=1.0, max_delay=300.0)
    assert not failures.paused(0.0) and failures.last_error is None
    delays = []
    for _ in range(12):
        failures.failed("tap", RuntimeError("boom"), now=100.0)
        delays.append(failures.retry_at - 100.0)
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert failures.paused(399.9) and not failures.paused(400.0)
    assert failures.count == 12 and failures.last_error == "tap: RuntimeError: boom"
    failures.succeeded()
    failures.failed("baseline", ValueError("x" * 2000), now=500.0)
    assert failures.retry_at == 501.0 and failures.count == 13
    assert failures.last_error is not None and len(failures.last_error) == 500


def test_failed_loads_are_reported_and_retried_until_monitoring_resumes() -> None:
    rng = np.random.default_rng(11)
    clock, taps = FakeClock(), FakeTaps()
    factory = FlakyFactory(taps, failures=2)
    reference = gaussian_reference(rng, 64)
    executor = InlineExecutor()
    monitor = DriftMonitor(
        norm_layers(), factory, executor, 50.0, 1.0, reference=reference, clock=clock
    )
    fed = list(batches(rng, [4] * 7))
    feed = iter(fed)
    before = datetime.now().astimezone()

    # The baseline job's load failed: counted and shown everywhere; tapping pauses for 1 s.
    snapshot = monitor.snapshot()
    assert factory.calls == 1 and snapshot["errors"] == 1
    assert snapshot["last_error"] == "baseline: OSError: model file vanished (try 1)"
    at = datetime.fromisoformat(snapshot["last_error_at"])
    assert before - timedelta(seconds=1) <= at <= datetime.now().astimezone()
    assert exported_errors(monitor) == 1.0
    assert "1 drift tap error " in errors_line(snapshot)
    assert "model file vanished (try 1)" in errors_line(snapshot)
    monitor.observe(next(feed), 4, 1e-3)
    clock.now = 0.99
    monitor.observe(next(feed), 4, 1e-3)
    assert factory.calls == 1 and monitor.snapshot()["batches_tapped"] == 0

    clock.now = 1.0  # the pause is over: tried again, fails again, and pauses for 2 s
    monitor.observe(next(feed), 4, 1e-3)
    clock.now = 2.99
    monitor.observe(next(feed), 4, 1e-3)
    snapshot = monitor.snapshot()
    assert factory.calls == 2 and snapshot["errors"] == 2 and snapshot["batches_tapped"] == 0
    assert snapshot["last_error"] == "tap: OSError: model file vanished (try 2)"
    assert exported_errors(monitor) == 2.0
    assert "2 drift tap errors" in errors_line(snapshot)

    clock.now = 3.0  # the load succeeds: this batch and every later one is tapped again
    for _ in range(3):
        monitor.observe(next(feed), 4, 1e-3)
    snapshot = monitor.snapshot()
    tapped = [x for x in taps.seen if len(x) == 4]  # the rest is the reference (baseline)
    assert factory.calls == 3 and [id(x) for x in tapped] == [id(b["x"]) for b in fed[4:]]
    assert (snapshot["batches_seen"], snapshot["batches_tapped"]) == (7, 3)
    assert snapshot["samples_tapped"] == 12 and snapshot["errors"] == 2
    assert exported_errors(monitor) == 2.0  # a counter: failures stay counted
    # The baseline deferred by the failed load is computed now, as a healthy monitor's is.
    healthy = DriftMonitor(
        norm_layers(), FakeTaps, InlineExecutor(), 50.0, max_overhead=1.0, reference=reference
    )
    for inputs in fed[4:]:
        healthy.observe(inputs, 4, 1e-3)
    expected = healthy.snapshot()
    assert snapshot["baseline"] == expected["baseline"] == "reference.npy (64 samples)"
    assert snapshot["layers"] == expected["layers"]
    assert all(layer["baseline"] is not None for layer in snapshot["layers"])


def test_a_success_resets_the_backoff_after_failing_forwards() -> None:
    rng = np.random.default_rng(12)
    clock, taps = FakeClock(), FakeTaps()
    monitor = DriftMonitor(norm_layers(), lambda: taps, InlineExecutor(), 50.0, 1.0, clock=clock)
    feed = batches(rng, [2] * 100)
    taps.fail = True
    for now in (0.0, 1.0, 3.0):  # 1 s, then 2 s, then 4 s of pause
        clock.now = now
        monitor.observe(next(feed), 2, 1e-3)
    clock.now = 6.99
    monitor.observe(next(feed), 2, 1e-3)
    assert monitor.errors == 3 and monitor.snapshot()["batches_tapped"] == 0
    assert exported_errors(monitor) == 3.0
    taps.fail = False
    clock.now = 7.0
    monitor.observe(next(feed), 2, 1e-3)
    monitor.observe(next(feed), 2, 1e-3)
    assert monitor.snapshot()["batches_tapped"] == 2
    taps.fail = True
    monitor.observe(next(feed), 2, 1e-3)  # fails: paused for 1 s again, not 8 s
    taps.fail = False
    clock.now = 8.0
    monitor.observe(next(feed), 2, 1e-3)
    snapshot = monitor.snapshot()
    assert snapshot["errors"] == 4 and snapshot["batches_tapped"] == 3
    assert snapshot["last_error"] == "tap: RuntimeError: tap failed"


def test_served_model_reports_a_failed_load_and_taps_again_after_the_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the app: the first load of digits' tapped forward fails (its baseline job);
    the JSON, the status page and ``/metrics`` show it, and served batches are tapped again."""
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", root / "digits")
    toml = root / "digits" / "config.toml"
    toml.write_text(toml.read_text().replace("[drift]\n", "[drift]\nmax_overhead = 1.0\n"))
    real_open_taps = service.drift.factory.open_taps
    calls: list[Path] = []

    def open_taps(config: ModelConfig, version_dir: Path, threads: int = 0) -> TappedForward:
        calls.append(version_dir)
        if len(calls) == 1:
            raise MemoryError("no room for a second copy")
        return real_open_taps(config, version_dir, threads)

    monkeypatch.setattr(service.drift.factory, "open_taps", open_taps)
    images = load_digits_split()[2][:64]
    with make_client(root) as client:
        drift = poll(client, lambda body: body["errors"] > 0)
        assert drift["errors"] == 1 and drift["baseline"] == "reference.npy (1078 samples)"
        assert drift["last_error"] == "baseline: MemoryError: no room for a second copy"
        assert isinstance(drift["last_error_at"], str)
        assert scraped_errors(client) == {"digits": 1.0}
        line = section(parse(client.get("/").text).root, "digits").all("p", "drift-errors")
        assert "1 drift tap error" in line[0].content and "no room" in line[0].content

        def served_and_tapped(body: dict[str, Any]) -> bool:
            ready = all(layer["baseline"] is not None for layer in body["layers"])
            if body["batches_tapped"] >= 2 and ready:
                return True
            response = client.post("/v2/models/digits/infer", content=infer_body(images))
            assert response.status_code == 200
            return False

        drift = poll(client, served_and_tapped, timeout=30.0)
        assert drift["errors"] == 1 and len(calls) == 2
        assert drift["samples_tapped"] == 64 * drift["batches_tapped"]
        assert all(layer["drift"] is not None for layer in drift["layers"])
        assert scraped_errors(client) == {"digits": 1.0}


def poll(
    client: TestClient, done: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    """The digits drift JSON once ``done`` says so."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get("/v2/models/digits/drift").json()
        if done(body):
            return body
        time.sleep(0.1)
    raise TimeoutError(f"drift never reached the expected state: {body}")


def scraped_errors(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bnserve_drift_errors_total"
    }
