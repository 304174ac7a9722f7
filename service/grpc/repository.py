"""Triton's model-repository RPCs over gRPC: index, load, unload (load and unload are admin,
as over HTTP: ``service.api.repository``)."""

import asyncio
from collections.abc import Mapping
from typing import Any

from service.api.context import ServiceContext
from service.errors import InvalidInput
from service.grpc.auth import require_admin
from service.grpc.generated.inference import grpc_service_pb2 as pb
from service.grpc.status import Context

Entry = pb.RepositoryIndexResponse.ModelIndex
_UNLOAD = frozenset({"unload_dependents"})


def _entry(ctx: ServiceContext, name: str) -> Entry:
    if ctx.registry.is_loaded(name):
        version = str(ctx.registry.get(name).version)
        return Entry(name=name, version=version, state="READY", reason="")
    return Entry(name=name, version="", state="UNAVAILABLE", reason="unloaded")


def _no_parameters(params: Mapping[str, Any], rpc: str, harmless: frozenset[str]) -> None:
    """Triton's load parameters (a config override, model files) have no equivalent here;
    ``harmless`` ones (``unload_dependents``: bnserve has no ensembles) are ignored."""
    unsupported = [name for name in params if name not in harmless]
    if unsupported:
        names = ", ".join(sorted(unsupported))
        raise InvalidInput(f"{rpc}: parameters are not supported (got {names})")


async def index(ctx: ServiceContext, request: pb.RepositoryIndexRequest) -> Any:
    names = await asyncio.to_thread(ctx.repository.model_names)
    entries = [_entry(ctx, name) for name in names]
    if request.ready:
        entries = [e for e in entries if e.state == "READY"]
    return pb.RepositoryIndexResponse(models=entries)


async def load(
    ctx: ServiceContext, request: pb.RepositoryModelLoadRequest, context: Context
) -> Any:
    require_admin(context, ctx.admin_token)
    _no_parameters(request.parameters, "RepositoryModelLoad", frozenset())
    await ctx.registry.load(request.model_name)
    return pb.RepositoryModelLoadResponse()


async def unload(
    ctx: ServiceContext, request: pb.RepositoryModelUnloadRequest, context: Context
) -> Any:
    require_admin(context, ctx.admin_token)
    _no_parameters(request.parameters, "RepositoryModelUnload", _UNLOAD)
    await ctx.registry.unload(request.model_name)
    return pb.RepositoryModelUnloadResponse()
