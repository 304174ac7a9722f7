"""A real Prometheus server scrapes a real ``bnserve serve``: the drift gauges it stores equal
the service's own drift JSON, and every dashboard expression is valid PromQL.

Needs the ``prometheus`` binary (Debian package ``prometheus``: ``/usr/bin/prometheus`` and
``/usr/bin/promtool``); without it they fail, saying what to install (``.ci/run`` installs it).
"""

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_status_page import repository_tapping_every_batch
from tests.conftest import REPO_ROOT, LiveServer, free_port, start_server
from tests.helpers import EXAMPLE_MODELS, infer_body, sample_inputs, settled_drift
from tests.metrics.test_dashboard import dashboard, expressions

GAUGES = {  # gauge -> how to read it from a layer of the drift JSON
    "bnserve_bn_drift": ("drift",),
    "bnserve_bn_drift_mean_shift": ("mean_shift",),
    "bnserve_bn_drift_log_var_ratio": ("log_var_ratio",),
    "bnserve_bn_drift_window_samples": ("window_samples",),
    "bnserve_bn_drift_baseline": ("baseline", "drift"),
}
WAIT = 15.0  # seconds for Prometheus to start and scrape (scrape interval 1 s)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is not None:
        return path
    message = (
        f"`{name}` not found: install the Debian package `prometheus` (apt-get install prometheus)"
    )
    pytest.fail(message)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    binary("prometheus")  # before starting anything
    live = start_server(
        repository_tapping_every_batch(tmp_path, EXAMPLE_MODELS), tmp_path / "server.log"
    )
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def prometheus(server: LiveServer, tmp_path: Path) -> Iterator[httpx.Client]:
    """A Prometheus scraping ``server`` every second; a client on its HTTP API."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: bnserve\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client:
            yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(prometheus: httpx.Client, expr: str) -> dict[str, Any] | None:
    """The API's ``data`` for an instant query, None while Prometheus is not answering."""
    try:
        response = prometheus.get("/api/v1/query", params={"query": expr})
    except httpx.TransportError:
        return None
    body: dict[str, Any] = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    data: dict[str, Any] = body["data"]
    return data


def series(prometheus: httpx.Client, metric: str) -> dict[tuple[str, str, str], float]:
    """``metric`` per (model, version, layer) of the models ``drive`` serves; other bundled
    models get no traffic here."""
    data = query(prometheus, metric)
    return {
        (s["metric"]["model"], s["metric"]["version"], s["metric"]["layer"]): float(s["value"][1])
        for s in (data or {"result": []})["result"]
        if s["metric"]["model"] in EXAMPLE_MODELS
    }


def drive(server: LiveServer) -> dict[str, dict[str, Any]]:
    """Two batches of 32 to every model; every model's settled drift JSON."""
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        for model in EXAMPLE_MODELS:
            x = sample_inputs(model, 64, seed=3)
            for batch in (x[:32], x[32:]):
                response = client.post(f"/v2/models/{model}/infer", content=infer_body(batch))
                assert response.status_code == 200, response.text
        drift = {model: settled_drift(client, model) for model in EXAMPLE_MODELS}
        for model in EXAMPLE_MODELS:
            stats = client.get(f"/v2/models/{model}/stats").json()["layers"]
            monitored = [
                s["name"] for s in stats if s["running_mean"] and not s["batch_independent"]
            ]
            assert [layer["name"] for layer in drift[model]["layers"]] == monitored
            assert drift[model]["samples_tapped"] == 64
    return drift


def test_prometheus_stores_the_drift_json_per_layer(
    server: LiveServer, prometheus: httpx.Client
) -> None:
    drift = drive(server)
    expected = {
        (model, body["version"], layer["name"]): layer
        for model, body in drift.items()
        for layer in body["layers"]
    }
    deadline = time.monotonic() + WAIT
    while set(series(prometheus, "bnserve_bn_drift")) != set(expected):
        if time.monotonic() > deadline:
            targets = prometheus.get("/api/v1/targets").json()
            pytest.fail(f"no complete scrape after {WAIT} s; targets: {targets}")
        time.sleep(0.2)
    for metric, path in GAUGES.items():
        stored = series(prometheus, metric)
        assert set(stored) == set(expected), metric
        for key, layer in expected.items():
            value: Any = layer
            for part in path:
                value = value[part]
            assert stored[key] == pytest.approx(value, rel=1e-9), (metric, key)

    for expr in expressions(dashboard()):  # valid PromQL, with the dashboard's variables set
        assert query(prometheus, expr.replace("$model", ".*")) is not None, expr


def test_promtool_accepts_the_deployed_scrape_config() -> None:
    result = subprocess.run(
        [
            binary("promtool"),
            "check",
            "config",
            str(REPO_ROOT / "deploy/prometheus/prometheus.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
