"""Static checks of the container image and the Compose stack (no Docker engine here)."""

import re
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings
from tests.deploy import dockerfile
from tests.deploy.dockerfile import REPO_ROOT


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return loaded


def test_dockerfile_is_slim_cpu_only_non_root_with_a_readiness_check() -> None:
    steps = dockerfile.instructions()
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


def test_dockerfile_exposes_the_http_and_grpc_ports_it_configures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_env = {k: v for k, v in dockerfile.env().items() if k.startswith("BNSERVE_")}
    assert set(image_env) <= {f"BNSERVE_{name.upper()}" for name in ServiceSettings.model_fields}
    for name, value in image_env.items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings()
    assert settings.grpc_port != 0 and settings.port != settings.grpc_port
    assert dockerfile.exposed_ports() == {settings.port, settings.grpc_port}
    health = next(arg for kind, arg in dockerfile.instructions() if kind == "HEALTHCHECK")
    assert f"127.0.0.1:{settings.port}/" in health


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


def test_compose_publishes_grpc_through_the_load_balancer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    replicas = [name for name in services if name.startswith("bnserve-")]
    environment = services[replicas[0]]["environment"]
    assert set(environment) <= {f"BNSERVE_{name.upper()}" for name in ServiceSettings.model_fields}
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    settings = ServiceSettings()
    assert all(
        services[name]["environment"] == services[replicas[0]]["environment"] for name in replicas
    )
    balancer = services["loadbalancer"]
    nginx = (REPO_ROOT / balancer["volumes"][0].split(":")[0]).read_text()
    listens = {int(port) for port in re.findall(r"^\s*listen (\d+)", nginx, re.MULTILINE)}
    published = {int(mapping.split(":")[-1]) for mapping in balancer["ports"]}
    assert published == listens == {settings.port, settings.grpc_port}
    grpc_block = nginx[nginx.index(f"listen {settings.grpc_port}") :]
    grpc_upstream = re.search(r"grpc_pass grpc://(\w+);", grpc_block)
    assert grpc_upstream is not None and "http2 on;" in grpc_block
    members = re.search(rf"upstream {grpc_upstream[1]} {{([^}}]*)}}", nginx)
    assert members is not None
    servers = set(re.findall(r"server ([\w-]+):(\d+)", members[1]))
    assert servers == {(name, str(settings.grpc_port)) for name in replicas}


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
