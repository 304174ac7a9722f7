"""``inference.GRPCInferenceService``: health, metadata and ``ModelInfer`` on the registry and
batchers that HTTP uses, with HTTP's limits (``service.api.v2``) and messages.

Each RPC is a thin edge: check, call the core, shape the reply; every ``ServiceError`` ends
the call through ``status.abort``. The repository RPCs live in ``repository.py``.
"""

import asyncio
import time
from typing import Any

import grpc

from service import __version__
from service.api.context import ServiceContext
from service.api.v2 import EXTENSIONS
from service.config import TensorSpec
from service.errors import ModelNotReady, ServiceError
from service.grpc import repository
from service.grpc.gate import Gate
from service.grpc.generated.inference import grpc_service_pb2 as pb
from service.grpc.status import Context, abort, code_of
from service.grpc.tensors import decode_request, encode_response
from service.protocol.limits import THREAD_DECODE_BYTES
from service.registry import LoadedModel
from service.repository import parse_version


def _version(text: str) -> int | None:
    """A request's ``model_version``: empty means the serving version."""
    return parse_version(text) if text else None


def _tensors(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=[-1, *s.shape]
        )
        for s in specs
    ]


class InferenceServicer:
    """Registered with ``add_GRPCInferenceServiceServicer_to_server``, which finds the RPCs by
    name (the generated base class is untyped, so it is not subclassed)."""

    def __init__(self, ctx: ServiceContext, gate: Gate) -> None:
        self._ctx = ctx
        self._gate = gate

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._ctx.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(name="bnserve", version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        try:
            self._ctx.registry.get(request.name, _version(request.version))
        except ModelNotReady:
            return pb.ModelReadyResponse(ready=False)
        except ServiceError as exc:
            await abort(context, exc)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        try:
            model = await self._ctx.registry.get_version(request.name, _version(request.version))
            versions = await asyncio.to_thread(
                self._ctx.repository.versions, model.name, model.config
            )
        except ServiceError as exc:
            await abort(context, exc)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in versions],
            platform=model.backend.platform,
            inputs=_tensors(model.config.inputs),
            outputs=_tensors(model.config.outputs),
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        """Counted in ``bnserve_requests_total{protocol="grpc"}`` under the model's name when
        that model is loaded (bounded labels, as HTTP), ``code`` the status code's name."""
        name = request.model_name
        if not self._ctx.registry.is_loaded(name):
            try:
                return await self._infer(request)
            except Exception as exc:
                await abort(context, exc)
        started = time.perf_counter()
        code = grpc.StatusCode.INTERNAL
        try:
            response = await self._infer(request)
            code = grpc.StatusCode.OK
            return response
        except Exception as exc:
            if isinstance(exc, ServiceError):
                code = code_of(exc)
            await abort(context, exc)
        finally:
            self._ctx.metrics.observe_request(name, code.name, "grpc", started)

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        ctx = self._ctx
        model = await ctx.registry.get_version(request.model_name, _version(request.model_version))
        size = request.ByteSize()
        with (
            self._gate.admit(),
            ctx.bodies.hold(size, model.body_bounds.json, lambda: _explain(model)),
        ):
            if size > THREAD_DECODE_BYTES:
                req = await asyncio.to_thread(decode_request, request, model.config)
            else:
                req = decode_request(request, model.config)
            outputs = await model.infer(req.inputs, req.batch_size)  # Timeout past the limit
        typed = not request.raw_input_contents
        return encode_response(
            request.model_name, str(model.version), req, outputs, model.config, typed
        )

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        try:
            return await repository.index(self._ctx, request)
        except ServiceError as exc:
            await abort(context, exc)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        try:
            return await repository.load(self._ctx, request, context)
        except ServiceError as exc:
            await abort(context, exc)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        try:
            return await repository.unload(self._ctx, request, context)
        except ServiceError as exc:
            await abort(context, exc)


def _explain(model: LoadedModel) -> str:
    """Where a model's message bound comes from: a valid request is never larger than its
    JSON form (``service.protocol.limits``), which a protobuf encoding never exceeds."""
    return (
        f"the largest valid request for model '{model.name}' "
        f"(max_batch_size {model.config.max_batch_size})"
    )
