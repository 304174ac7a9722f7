"""``bnserve.v1.Recalibration/Recalibrate``: the recalibration stream over gRPC.

The same steps as ``POST /v2/models/{m}/recalibrate`` (``service.api.recalibration``), in the
same order: admin token, parameters (the same pydantic validation as the query string), source,
content type, model, then ``Recalibrator.run`` on the chunks, which parses them with the same
parsers under the same size limit and idle timeout and writes nothing unless the whole stream
was read and checked. The reply is the HTTP response body, from the same serializer.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
from pydantic import TypeAdapter, ValidationError

from service.api.context import ServiceContext
from service.api.responses import json_bytes
from service.errors import BodyTimeout, InvalidInput, ServiceError, UnsupportedMediaType
from service.grpc.auth import require_admin
from service.grpc.generated.bnserve.v1 import recalibration_pb2 as pb
from service.grpc.generated.bnserve.v1 import recalibration_pb2_grpc as pb_grpc
from service.grpc.status import Context, abort
from service.recalibration.params import RecalibrationParams
from service.registry import LoadedModel
from service.repository import parse_version
from service.streams import MEDIA_TYPES

_PARAMS = TypeAdapter(RecalibrationParams)
_OPTIONAL = ("mode", "batch_size", "prior", "momentum", "layers", "activate")

Requests = AsyncIterator[pb.RecalibrateRequest]


class ClientCancelled(Exception):
    """The client cancelled the call before the stream ended; nothing is written. Not a
    ``ServiceError``: no one is left to answer, and the run counts as aborted, not failed."""


def recalibration_params(message: pb.RecalibrationParameters) -> RecalibrationParams:
    """The header's parameters through the query string's validation: an unset field is an
    absent query parameter, and a bad value gets pydantic's message, located by field name."""
    given: dict[str, Any] = {
        name: getattr(message, name) for name in _OPTIONAL if message.HasField(name)
    }
    given["dry_run"] = message.dry_run
    try:
        return _PARAMS.validate_python(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"parameters.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidInput(problems) from exc


def _source(header: pb.RecalibrateHeader) -> Literal["upload", "traffic"]:
    if header.source in ("", "upload"):
        return "upload"
    if header.source == "traffic":
        return "traffic"
    raise InvalidInput(f"source {header.source!r} is not one of upload, traffic")


class RecalibrationServicer(pb_grpc.RecalibrationServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def Recalibrate(
        self, request_iterator: Requests, context: Context
    ) -> pb.RecalibrateResponse:
        try:
            require_admin(context, self._ctx.admin_token)
            outcome = await self._recalibrate(aiter(request_iterator))
        except ServiceError as exc:
            await abort(context, exc)
        return pb.RecalibrateResponse(report_json=json_bytes(outcome).decode())

    async def _recalibrate(self, messages: Requests) -> object:
        first = await self._first(messages)
        header = first.header
        params = recalibration_params(header.parameters)
        source = _source(header)
        if source == "traffic":  # the captured samples, not the stream
            model = await self._model(header)
            return await self._ctx.adaptation.from_traffic(model, params)
        if not header.content_type:
            raise UnsupportedMediaType(
                f"the header's content_type is required: one of {', '.join(MEDIA_TYPES)}"
            )
        model = await self._model(header)
        cancelled = asyncio.Event()
        chunks = _chunks(first.chunk, messages, cancelled)
        work = asyncio.ensure_future(
            self._ctx.recalibrator.run(model, params, header.content_type, chunks)
        )
        try:
            # Shielded: a cancelled call must not cancel the run between two steps (a feed
            # left running on the model's calibration forward, the lock released early).
            # The run sees the cancellation as its stream failing, and writes nothing.
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled.set()
            await asyncio.wait({work})
            raise

    async def _first(self, messages: Requests) -> pb.RecalibrateRequest:
        """The first message, within the idle timeout; it must carry the header."""
        idle = self._ctx.settings.recalibration_idle_timeout
        try:
            first = await asyncio.wait_for(anext(messages), idle)
        except StopAsyncIteration:
            first = pb.RecalibrateRequest()
        except TimeoutError:
            raise BodyTimeout(
                f"no message arrived for {idle:g} s (recalibration_idle_timeout): "
                "recalibration abandoned, nothing written"
            ) from None
        if not first.HasField("header"):
            raise InvalidInput(
                "the first message must carry the header (model_name, content_type, parameters)"
            )
        if not first.header.model_name:
            raise InvalidInput("the header's model_name is required")
        return first

    async def _model(self, header: pb.RecalibrateHeader) -> LoadedModel:
        version = parse_version(header.model_version) if header.model_version else None
        return await self._ctx.registry.get_version(header.model_name, version)


async def _chunks(
    first: bytes, messages: Requests, cancelled: asyncio.Event
) -> AsyncIterator[bytes]:
    """The stream's bytes: the first message's chunk, then every later one's; a later message
    with a header is refused, and a cancelled call ends the stream with ``ClientCancelled``."""
    yield first
    index = 2  # counted from 1, the header's message
    while True:
        receive = asyncio.ensure_future(anext(messages))
        gone = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait({receive, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the consumer gives up waiting (the idle timeout)
            gone.cancel()
            receive.cancel()
        if not receive.done() or receive.cancelled():
            raise ClientCancelled("the client cancelled the call: nothing written")
        try:
            message = receive.result()
        except StopAsyncIteration:
            return
        if message.HasField("header"):
            raise InvalidInput(f"message {index}: only the first message may carry a header")
        index += 1
        yield message.chunk


def add_to_server(server: grpc.aio.Server, ctx: ServiceContext) -> None:
    """Serve ``bnserve.v1.Recalibration`` on ``server`` with the app's context."""
    add = pb_grpc.add_RecalibrationServicer_to_server
    add(RecalibrationServicer(ctx), server)  # type: ignore[no-untyped-call]
