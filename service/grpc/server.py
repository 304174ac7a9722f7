"""The ``grpc.aio`` server: built from a list of services, started in the FastAPI lifespan on
uvicorn's event loop (uvloop included: grpc.aio runs on any asyncio loop), stopped gracefully.

One process, one loop, one registry: an RPC awaits the same batcher futures as an HTTP
request, and nothing crosses threads but the model calls that already do.

``SERVICES`` is the one list of what the server speaks: each entry adds its servicer to the
server and names the service, for reflection and health.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.api.context import ServiceContext
from service.grpc import recalibration
from service.grpc.gate import Gate
from service.grpc.generated import POOL
from service.grpc.generated.bnserve.v1 import recalibration_pb2
from service.grpc.generated.inference import grpc_service_pb2, grpc_service_pb2_grpc
from service.grpc.health import HealthServicer
from service.grpc.inference import InferenceServicer

log = logging.getLogger(__name__)

AddService = Callable[[grpc.aio.Server, ServiceContext, Gate], None]


@dataclass(frozen=True)
class Service:
    add: AddService
    """Adds the service's servicer to a server."""
    name: str
    """The service's full name, for reflection and health."""


def add_inference(server: grpc.aio.Server, ctx: ServiceContext, gate: Gate) -> None:
    add = grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
    add(InferenceServicer(ctx, gate), server)  # type: ignore[no-untyped-call]


def add_recalibration(server: grpc.aio.Server, ctx: ServiceContext, _gate: Gate) -> None:
    """Recalibrations need no gate: a stopping server aborts them (``Recalibrator.stop``)."""
    recalibration.add_to_server(server, ctx)


def _name(file: Any, service: str) -> str:
    full_name: str = file.services_by_name[service].full_name
    return full_name


SERVICES: tuple[Service, ...] = (
    Service(add_inference, _name(grpc_service_pb2.DESCRIPTOR, "GRPCInferenceService")),
    Service(add_recalibration, _name(recalibration_pb2.DESCRIPTOR, "Recalibration")),
)


def _options(ctx: ServiceContext) -> list[tuple[str, Any]]:
    """A message larger than ``max_body_bytes`` is refused by grpc itself (RESOURCE_EXHAUSTED)
    before it is read whole, as HTTP refuses such a body; replies are not limited."""
    return [
        ("grpc.max_receive_message_length", ctx.settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
    ]


@dataclass(frozen=True)
class GrpcServer:
    server: grpc.aio.Server
    gate: Gate


def build_server(
    ctx: ServiceContext, gate: Gate, services: tuple[Service, ...] = SERVICES
) -> grpc.aio.Server:
    """The server with ``services``, health and reflection, bound to ``settings.grpc_port``
    on ``settings.host`` (not started)."""
    server = grpc.aio.server(options=_options(ctx))
    for service in services:
        service.add(server, ctx, gate)
    names = [service.name for service in services]
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(ctx, names), server)
    # Reflection describes services from one pool: the generated code's private one (see
    # scripts/generate_grpc.py), given the health and reflection files too (idempotent).
    for module in (health_pb2, reflection_pb2):
        POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    health = _name(health_pb2.DESCRIPTOR, "Health")
    reflection.enable_server_reflection([*names, health, reflection.SERVICE_NAME], server, POOL)
    address = f"{ctx.settings.host}:{ctx.settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"gRPC server: cannot listen on {address}")
    return server


async def start(ctx: ServiceContext) -> GrpcServer:
    gate = Gate()
    server = build_server(ctx, gate)
    await server.start()
    log.info("gRPC server listening on %s:%d", ctx.settings.host, ctx.settings.grpc_port)
    return GrpcServer(server, gate)


async def stop(running: GrpcServer, grace: float) -> None:
    """Refuse new calls at once (UNAVAILABLE, ``gate.py``); calls in flight get ``grace``
    seconds to finish, then are cancelled."""
    started = time.monotonic()
    with suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await running.gate.close()
    await running.server.stop(max(0.0, grace - (time.monotonic() - started)))
