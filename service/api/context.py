"""What the routes share: settings, repository, registry, admin token. Lives on ``app.state``."""

from dataclasses import dataclass, field

from starlette.requests import Request

from service.metrics import ServiceMetrics
from service.recalibration.runner import Recalibrator
from service.registry import ModelRegistry
from service.repository import ModelRepository
from service.settings import ServiceSettings


@dataclass
class ServiceContext:
    settings: ServiceSettings
    repository: ModelRepository
    registry: ModelRegistry
    admin_token: str
    recalibrator: Recalibrator
    metrics: ServiceMetrics
    ready: bool = field(default=False)


def context(request: Request) -> ServiceContext:
    ctx = request.app.state.context
    assert isinstance(ctx, ServiceContext)
    return ctx
