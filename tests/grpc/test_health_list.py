"""``Health/List`` (registered by grpcio-health-checking 1.82 and later, which the test run's
pinned 1.81 does not have; the README's run, unpinned, starts a server with it): every status,
the overall one and each model's, as ``Check`` answers them one by one."""

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from grpc_health.v1 import health_pb2

from service.errors import ModelNotFound
from service.grpc.health import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Repository:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def model_names(self) -> list[str]:
        return self.names

    def model_dir(self, name: str) -> Path:
        if name not in self.names:
            raise ModelNotFound(f"model '{name}' not found in the repository")
        return Path(name)


def _servicer(ready: bool, loaded: set[str]) -> HealthServicer:
    ctx: Any = SimpleNamespace(
        ready=ready,
        registry=SimpleNamespace(is_loaded=lambda name: name in loaded),
        repository=_Repository(["digits", "wine"]),
    )
    return HealthServicer(ctx, ["inference.GRPCInferenceService"])


def test_statuses_are_the_server_and_every_model_of_the_repository() -> None:
    statuses = asyncio.run(_servicer(True, {"digits"}).statuses())
    assert statuses == {
        "": SERVING,
        "inference.GRPCInferenceService": SERVING,
        "digits": SERVING,
        "wine": NOT_SERVING,  # in the repository, not loaded
    }


def test_statuses_while_models_load() -> None:
    statuses = asyncio.run(_servicer(False, set()).statuses())
    assert set(statuses.values()) == {NOT_SERVING}
