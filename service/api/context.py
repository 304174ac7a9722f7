"""What the routes share: settings, repository, registry, admin token. Lives on ``app.state``."""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from service.adaptation.loop import AdaptationLoop
from service.api.body import BodyReader
from service.metrics import ServiceMetrics
from service.recalibration.runner import Recalibrator
from service.registry import LoadedModel, ModelRegistry
from service.repository import ModelRepository, parse_version
from service.settings import ServiceSettings


@dataclass
class ServiceContext:
    settings: ServiceSettings
    repository: ModelRepository
    registry: ModelRegistry
    admin_token: str
    recalibrator: Recalibrator
    metrics: ServiceMetrics
    bodies: BodyReader
    """Inference bodies: per-request limits and the in-flight budget of the whole app."""
    adaptation: AdaptationLoop
    ready: bool = field(default=False)
    drains: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Graceful stops begun at SIGTERM, while uvicorn drains HTTP (the gRPC server's)."""
    _draining: list["asyncio.Future[None]"] = field(default_factory=list)

    def start_draining(self) -> None:
        """Begin every drain not begun yet (on the event loop)."""
        self._draining += [asyncio.ensure_future(drain()) for drain in self.drains]
        self.drains.clear()

    async def drained(self) -> None:
        """Wait for every drain begun."""
        await asyncio.gather(*self._draining)


def context(request: Request) -> ServiceContext:
    ctx = request.app.state.context
    assert isinstance(ctx, ServiceContext)
    return ctx


async def loaded_model(request: Request, name: str, version: str | None) -> LoadedModel:
    """The model a ``/v2/models/{name}[/versions/{version}]`` path names, loaded on demand."""
    registry = context(request).registry
    return await registry.get_version(name, None if version is None else parse_version(version))
