"""The Grafana dashboard and the Prometheus / Grafana provisioning under ``deploy/``.

Every metric a dashboard expression names must be one the service exports, checked against a
real ``/metrics`` scrape after traffic, taps and a recalibration of a model that adapts
(suffixes ``_bucket``, ``_sum``, ``_count``, ``_total`` included); ``rate``/``increase`` only
over counters and histogram series; every label the queries group by or print is one the
series carry.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_status_page import recalibrate_and_serve, repository_tapping_every_batch
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "bnserve.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
METRIC = re.compile(r"\bbnserve_[a-z0-9_]+\b")
SERVER_LABELS = {"instance", "job"}  # added by Prometheus at scrape time


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``node``, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and annotations."""
    return [obj["expr"] for obj in walk(board) if isinstance(obj.get("expr"), str)]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    flat = []
    for panel in board["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside it
    return flat


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """Overrides conftest's: digits taps every batch, so every drift gauge has a value, and
    proposes adaptations, so its adaptation counters are exported (at 0: the traffic here is
    too little for a decision)."""
    root = repository_tapping_every_batch(tmp_path)
    with (root / "digits" / "config.toml").open("a") as config:
        config.write('\n[adaptation]\ncapture = 1024\ntrigger = "propose"\nmin_samples = 512\n')
    return root


@pytest.fixture
def exported(client: TestClient) -> dict[str, tuple[str, set[str]]]:
    """Sample name -> (family type, label names), scraped after traffic and a recalibration."""
    recalibrate_and_serve(client)
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            _, labels = samples.setdefault(sample.name, (family.type, set()))
            labels.update(sample.labels)
    return samples


def test_every_dashboard_metric_is_exported_and_every_exported_one_is_shown(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    board = dashboard()
    exprs = expressions(board)
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    named |= set(METRIC.findall(json.dumps(board["templating"])))
    assert named, "no bnserve metric in the dashboard"
    assert named <= set(exported), f"not exported: {sorted(named - set(exported))}"
    for expr in exprs:
        for name in re.findall(r"\b(?:rate|increase|irate)\((bnserve_[a-z0-9_]+)", expr):
            assert exported[name][0] in {"counter", "histogram"}, f"rate of a gauge: {expr}"
        for name in re.findall(r"histogram_quantile\([^,]+,.*?\((bnserve_[a-z0-9_]+)", expr):
            assert name.endswith("_bucket") and exported[name][0] == "histogram", expr
    families = {name for name, (kind, _) in exported.items() if name.startswith("bnserve_")}
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in families}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in named}
    assert families <= shown, f"exported but on no panel: {sorted(families - shown)}"


def test_queries_group_and_print_only_labels_the_series_carry(
    exported: dict[str, tuple[str, set[str]]],
) -> None:
    labels = set().union(*(names for _, names in exported.values())) | SERVER_LABELS
    board = dashboard()
    for expr in expressions(board):
        for group in re.findall(r"\b(?:by|without) \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels, expr
        # A panel query filters by the dashboard's model variable, on every metric it reads.
        assert len(METRIC.findall(expr)) == expr.count('{model=~"$model"}'), expr
    for obj in walk(board):
        for key in ("legendFormat", "titleFormat", "textFormat"):
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", obj.get(key) or ""):
                assert label in labels, f"{key} {obj[key]!r}: no label {label!r}"


def test_panels_use_the_provisioned_datasource_and_the_model_variable() -> None:
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    drawn = [p for p in panels(board) if p["type"] != "row"]
    assert len({p["id"] for p in panels(board)}) == len(panels(board))
    for panel in drawn:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "model" and variable["datasource"]["uid"] == source["uid"]
    types = {p["type"] for p in drawn}
    assert {"timeseries", "state-timeline"} <= types
    exprs = expressions(board)
    # Requests by outcome and by protocol (http, grpc): the label ServiceMetrics gives them.
    assert "sum by (model, code, protocol) (rate(bnserve_requests_total" in " ".join(exprs)
    for q in ("0.5", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q}, sum by (le, model)") for e in exprs)
    ratio = [e for e in exprs if "bnserve_bn_drift{" in e and "/ bnserve_bn_drift_baseline{" in e]
    assert ratio, "no drift / baseline panel"


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus_at_the_replicas() -> None:
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "bnserve.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert sorted(p.name for p in DASHBOARDS.iterdir()) == ["bnserve.json"]
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["bnserve-1:8000", "bnserve-2:8000"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"


def test_compose_mounts_the_provisioning_where_it_says() -> None:
    compose = load_yaml(REPO_ROOT / "docker-compose.yml")
    services = compose.get("services", {})
    grafana = [s for s in services.values() if str(s.get("image", "")).startswith("grafana/")]
    prometheus = [s for s in services.values() if "prometheus" in str(s.get("image", ""))]
    assert grafana, "docker-compose.yml has no Grafana service"
    assert prometheus, "docker-compose.yml has no Prometheus service"
    mounts = {
        tuple(str(v).split(":")[:2])
        for service in grafana + prometheus
        for v in service.get("volumes", [])
    }
    assert ("./deploy/grafana/dashboards", "/var/lib/grafana/dashboards") in mounts
    assert ("./deploy/grafana/provisioning", "/etc/grafana/provisioning") in mounts
    assert ("./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml") in mounts
    assert {"bnserve-1", "bnserve-2", "prometheus"} <= set(services)
