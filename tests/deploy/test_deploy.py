"""Static checks of the container image and the Compose stack (no Docker engine here)."""

import re
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def _dockerfile() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_slim_cpu_only_non_root_with_a_readiness_check() -> None:
    steps = _dockerfile()
    instructions = [kind for kind, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    torch = next(arg for kind, arg in steps if kind == "RUN" and "torch" in arg)
    assert "--index-url" in torch and torch.rstrip().endswith("/cpu")
    assert instructions.index("RUN") < instructions.index("USER")  # torch before the project
    user = [arg for kind, arg in steps if kind == "USER"]
    assert user and user[-1] not in ("root", "0")
    health = next(arg for kind, arg in steps if kind == "HEALTHCHECK")
    assert "/v2/health/ready" in health
    assert any(kind == "VOLUME" and "/models" in arg for kind, arg in steps)
    cmd = next(arg for kind, arg in reversed(steps) if kind == "CMD")
    assert "bnserve" in cmd and "serve" in cmd and "--workers" not in cmd


def test_compose_runs_two_replicas_on_one_models_volume_behind_a_load_balancer() -> None:
    compose = _compose()
    services = compose["services"]
    replicas = [name for name in services if name.startswith("bnserve-")]
    assert sorted(replicas) == ["bnserve-1", "bnserve-2"]
    mounts = {name: services[name]["volumes"] for name in replicas}
    assert all("models:/models" in volumes for volumes in mounts.values())
    assert "models" in compose["volumes"]
    for name in replicas:
        assert "/v2/health/ready" in " ".join(services[name]["healthcheck"]["test"])
        assert services[name]["environment"]["BNSERVE_HOST"] == "0.0.0.0"
    balancer = services["loadbalancer"]
    assert balancer["image"].startswith("nginx:")
    assert set(balancer["depends_on"]) == set(replicas)
    config_path = balancer["volumes"][0].split(":")[0]
    nginx = (REPO_ROOT / config_path).read_text()
    upstream = set(re.findall(r"server (bnserve-\d+):8000", nginx))
    assert upstream == set(replicas)
    assert "proxy_request_buffering off" in nginx  # recalibration streams pass through


def test_prometheus_scrapes_exactly_the_replicas() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:8000" for name in services if name.startswith("bnserve-")}
