"""The Kubernetes manifests in deploy/kubernetes: schema-valid, and consistent with the service.

``kubernetes-validate --strict`` checks each file against the API schemas of one Kubernetes
version (offline; unknown fields are errors). The rest checks what no schema knows: that the
ports, probe paths, environment names, volume paths and user agree with ``ServiceSettings``,
the app's routes and the Dockerfile.
"""

import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.repository import ModelRepository
from service.settings import ServiceSettings
from tests.deploy import dockerfile
from tests.deploy.dockerfile import REPO_ROOT

MANIFEST_DIR = REPO_ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = MANIFEST_DIR / "kustomization.yaml"
MANIFESTS = sorted(p for p in MANIFEST_DIR.glob("*.yaml") if p != KUSTOMIZATION)
OLDEST_SUPPORTED = "1.30.0"
"""The oldest Kubernetes the manifests are written for: the ``sleep`` preStop action and the
``kubernetes.io/h2c`` appProtocol need it. Kept in step with kustomization.yaml's header."""

Manifest = dict[str, Any]


def _validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", OLDEST_SUPPORTED]
    return subprocess.run(
        [*command, *map(str, paths)], capture_output=True, text=True, timeout=120, check=False
    )


def _manifests() -> dict[str, Manifest]:
    """Every resource by kind; each kind appears once in this folder."""
    by_kind: dict[str, Manifest] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in by_kind, f"{path.name}: a second {doc['kind']}"
            by_kind[doc["kind"]] = doc
    return by_kind


def _pod() -> Manifest:
    pod: Manifest = _manifests()["Deployment"]["spec"]["template"]
    return pod


def _container(name: str = "bnserve") -> Manifest:
    containers: list[Manifest] = _pod()["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _init_container() -> Manifest:
    (init,) = _pod()["spec"]["initContainers"]
    assert isinstance(init, dict)
    return init


def _env(container: Manifest) -> dict[str, Manifest]:
    return {var["name"]: var for var in container.get("env", [])}


def _settings(monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The settings the server container would start with: its plain env values applied."""
    for name, var in _env(_container()).items():
        if "value" in var:
            monkeypatch.setenv(name, var["value"])
    return ServiceSettings()


def _mount_of(container: Manifest, volume: str) -> str:
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    assert len(mounts) == 1, f"container {container['name']} mounts {volume} {len(mounts)} times"
    return str(mounts[0])


def _claimed_volume() -> tuple[str, str]:
    """(volume name, claim name) of the pod's one PersistentVolumeClaim volume."""
    (volume,) = [v for v in _pod()["spec"]["volumes"] if "persistentVolumeClaim" in v]
    return volume["name"], volume["persistentVolumeClaim"]["claimName"]


def test_every_manifest_validates_strictly() -> None:
    assert {p.name for p in MANIFESTS} >= {
        "deployment.yaml",
        "service.yaml",
        "pvc.yaml",
        "hpa.yaml",
        "pdb.yaml",
    }
    result = _validate(MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in MANIFESTS:
        assert re.search(rf"{re.escape(str(path))} passed for resource", result.stdout), (
            result.stdout
        )


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("  replicas: 2\n", "  replicas: two\n", "'two' is not of type 'integer'"),
        ("containerPort: 8001", "containerPort: 8001, hostProtocol: TCP", "hostProtocol"),
    ],
    ids=["wrong type", "unknown field"],
)
def test_validation_rejects_a_broken_deployment(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    text = (MANIFEST_DIR / "deployment.yaml").read_text()
    assert text.count(old) == 1
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace(old, new))
    result = _validate([broken])
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


def test_kustomization_lists_every_manifest_and_names_the_image() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    images = {c["image"].rsplit(":", 1)[0] for c in [_container(), _init_container()]}
    assert {image["name"] for image in kustomization["images"]} == images
    assert (
        f"Kubernetes ({OLDEST_SUPPORTED.rsplit('.', 1)[0]} or later)" in KUSTOMIZATION.read_text()
    )


def test_env_names_are_settings_fields_and_their_values_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env(_container())
    fields = {f"BNSERVE_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(env) <= fields, sorted(set(env) - fields)
    assert {"BNSERVE_HOST", "BNSERVE_PORT", "BNSERVE_GRPC_PORT", "BNSERVE_MODELS"} <= set(env)
    settings = _settings(monkeypatch)  # raises on a value ServiceSettings refuses
    assert settings.host == "0.0.0.0"  # reachable from the kubelet and the Service
    assert settings.grpc_port != 0


def test_container_and_service_ports_are_the_settings_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(monkeypatch)
    expected = {"http": settings.port, "grpc": settings.grpc_port}
    container_ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert container_ports == expected
    service = _manifests()["Service"]["spec"]
    for port in service["ports"]:
        target = port["targetPort"]
        assert container_ports.get(target, target) == expected[port["name"]]
    assert {p["name"]: p["port"] for p in service["ports"]} == expected
    assert service["selector"].items() <= _pod()["metadata"]["labels"].items()


def test_probes_and_scrape_path_answer_on_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(monkeypatch)
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in container if kind.endswith("Probe")}
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    annotations = _pod()["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.port
    for kind, probe in probes.items():
        assert ports.get(probe["port"], probe["port"]) == settings.port, kind
    # The app itself, started on an (empty, so at once ready) repository, answers each path.
    app = create_app(settings.model_copy(update={"models": tmp_path, "grpc_port": 0}))
    with TestClient(app) as client:
        for path in [
            *(probe["path"] for probe in probes.values()),
            annotations["prometheus.io/path"],
        ]:
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)


def test_termination_grace_outlasts_the_servers_graceful_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(monkeypatch)
    pre_stop = _container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = _pod()["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + settings.graceful_timeout


def test_admin_token_comes_from_the_secret_the_docs_create() -> None:
    token = _env(_container())["BNSERVE_ADMIN_TOKEN"]
    assert "value" not in token
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref.get("optional", False) is False  # replicas must not each invent a token
    documented = re.findall(
        r"kubectl create secret generic (\S+) --from-literal=([\w.-]+)=", KUSTOMIZATION.read_text()
    )
    assert documented == [(ref["name"], ref["key"])]
    assert "Secret" not in _manifests()  # no token is committed


def test_shared_repository_is_a_read_write_many_claim_mounted_at_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(monkeypatch)
    claim = _manifests()["PersistentVolumeClaim"]
    volume, claim_name = _claimed_volume()
    assert claim_name == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert Path(_mount_of(_container(), volume)) == settings.models
    init = _init_container()
    seed_env = {name: var["value"] for name, var in _env(init).items()}
    assert seed_env["SEED_TO"] == _mount_of(init, volume)
    assert seed_env["SEED_FROM"] == dockerfile.env()["BNSERVE_MODELS"]  # the image's models


def _seed(source: Path, dest: Path) -> subprocess.Popen[str]:
    """The init container's own script, run by ``sh`` on local folders."""
    shell, flags, script = _init_container()["command"]
    return subprocess.Popen(
        [shell, flags, script],
        env={"PATH": "/usr/bin:/bin", "SEED_FROM": str(source), "SEED_TO": str(dest)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _same_tree(left: Path, right: Path) -> bool:
    compared = filecmp.dircmp(left, right)
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    return (
        not mismatch
        and not errors
        and all(_same_tree(left / sub, right / sub) for sub in compared.common_dirs)
    )


def test_seeding_copies_the_image_models_once_and_never_overwrites(tmp_path: Path) -> None:
    source = tmp_path / "image-models"
    shutil.copytree(REPO_ROOT / "models", source)
    dest = tmp_path / "shared"
    dest.mkdir()
    # Two replicas starting at once: both finish, one copy of each model wins whole.
    seeders = [_seed(source, dest), _seed(source, dest)]
    for seeder in seeders:
        _, stderr = seeder.communicate(timeout=120)
        assert seeder.returncode == 0, stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in source.iterdir())
    assert _same_tree(source, dest)
    repo = ModelRepository(dest)
    assert repo.model_names() == ModelRepository(source).model_names()
    assert all(repo.versions(name) for name in repo.model_names())

    # A later start keeps what the shared repository holds (e.g. a recalibrated version).
    name = repo.model_names()[0]
    config = dest / name / "config.toml"
    edited = config.read_text() + "\n# edited on the shared volume\n"
    config.write_text(edited)
    shutil.rmtree(dest / repo.model_names()[-1])
    seeder = _seed(source, dest)
    _, stderr = seeder.communicate(timeout=120)
    assert seeder.returncode == 0, stderr
    assert config.read_text() == edited
    assert ModelRepository(dest).model_names() == ModelRepository(source).model_names()


def test_pod_runs_as_the_images_user_without_privileges() -> None:
    pod = _pod()["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile.user_uid()
    scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in [_container(), _init_container()]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0
        # A read-only root needs every written path on a volume: the repository and /tmp.
        assert security["readOnlyRootFilesystem"] is True
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and tmp[0]["name"] in scratch


def test_resources_back_the_autoscaler_and_the_thread_count() -> None:
    container = _container()
    requests = container["resources"]["requests"]
    assert "memory" in container["resources"]["limits"]
    hpa = _manifests()["HorizontalPodAutoscaler"]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] in requests  # utilisation is relative to the request
    threads = int(_env(container)["BNSERVE_MODEL_THREADS"]["value"])
    assert threads == int(requests["cpu"])


def test_autoscaler_targets_the_deployment() -> None:
    manifests = _manifests()
    deployment = manifests["Deployment"]
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] == 2


def test_disruption_budget_selects_the_pods_and_allows_a_drain() -> None:
    manifests = _manifests()
    labels = _pod()["metadata"]["labels"]
    budget = manifests["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    deployment = manifests["Deployment"]["spec"]
    assert deployment["selector"]["matchLabels"] == budget["selector"]["matchLabels"]
    assert 1 <= budget["minAvailable"] < deployment["replicas"]
