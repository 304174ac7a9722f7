"""``grpc.health.v1.Health``: the overall status (service ``""``, or the name of a service of
this server) and one status per model, worked out on each call from the registry, so that a
load, unload or activation shows at once without a hook in the core.

Overall: SERVING once every model has loaded (HTTP's ``/v2/health/ready``), NOT_SERVING before
and while stopping. A model: SERVING while loaded, NOT_SERVING when the repository has it but
it is not loaded; a name the repository does not know is NOT_FOUND (``Check``) or
SERVICE_UNKNOWN (``Watch``), as the health protocol asks.
"""

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from service.api.context import ServiceContext
from service.errors import ModelNotFound
from service.grpc.status import Context

Status = health_pb2.HealthCheckResponse.ServingStatus
WATCH_INTERVAL = 1.0
"""Seconds between re-checks of a watched status (``Watch`` streams only changes)."""


class HealthServicer:
    """Registered with ``add_HealthServicer_to_server`` (found by method name)."""

    def __init__(self, ctx: ServiceContext, services: Collection[str]) -> None:
        self._ctx = ctx
        self._services = services
        """The server's own service names, which stand for the overall status."""

    async def status(self, service: str) -> Any:
        """The status of ``service``; None for a name that is neither ours nor a model."""
        if service == "" or service in self._services:
            return health_pb2.HealthCheckResponse.SERVING if self._ctx.ready else _NOT_SERVING
        if self._ctx.registry.is_loaded(service):
            return health_pb2.HealthCheckResponse.SERVING
        try:
            await asyncio.to_thread(self._ctx.repository.model_dir, service)
        except ModelNotFound:
            return None
        return _NOT_SERVING

    async def Check(self, request: Any, context: Context) -> Any:
        status = await self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def statuses(self) -> dict[str, Any]:
        """Every status: the overall one (``""`` and the server's services) and each model's."""
        models = await asyncio.to_thread(self._ctx.repository.model_names)
        names = ["", *self._services, *models]
        return {name: await self.status(name) for name in names}

    async def List(self, request: Any, context: Context) -> Any:
        """``Health/List``, which grpcio-health-checking registers from 1.82 on (and then
        requires of every servicer); older versions never call it."""
        responses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in (await self.statuses()).items()
        }
        return health_pb2.HealthListResponse(statuses=responses)

    async def Watch(self, request: Any, context: Context) -> AsyncIterator[Any]:
        last = -1
        while True:
            status = await self.status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(WATCH_INTERVAL)


_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
