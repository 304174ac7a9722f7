"""The data plane as plain ASGI, served before FastAPI sees the request.

``ServiceApp.__call__`` hands ``POST /v2/models/{m}[/versions/{v}]/infer`` and
``POST /v1/models/{m}:predict`` to ``serve`` here: the body comes straight from ASGI
``receive``, the answer goes straight to ``send``. FastAPI's middleware stack, router,
``Request`` and ``Response`` cost about as much CPU as the model call of a small model, and
the data plane uses none of them (it parses its own bodies and has no dependencies). The
FastAPI routes for these paths stay in ``v2.py``, for the OpenAPI description and for
methods other than POST (405); they answer through ``reply`` too.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.api.body import declared_length
from service.api.context import ServiceContext
from service.api.errors import error_reply
from service.errors import PayloadTooLarge, ServiceError
from service.protocol.limits import THREAD_DECODE_BYTES
from service.protocol.v1 import decode_v1_instances, encode_v1_predictions
from service.protocol.v2 import decode_infer_request, encode_infer_response
from service.repository import parse_version

log = logging.getLogger(__name__)

_JSON = b"application/json"
_BINARY = b"application/octet-stream"


@dataclass(frozen=True, slots=True)
class Route:
    """A data-plane path: V2 ``infer`` (``version`` or None) or V1 ``predict``."""

    model: str
    version: str | None
    v1: bool = False


def match(method: str, path: str) -> Route | None:
    """The data-plane route ``method path`` names, or None (then FastAPI routes it)."""
    if method != "POST":
        return None
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer":
        return Route(parts[3], None) if parts[3] else None
    if (
        len(parts) == 7
        and parts[1] == "v2"
        and parts[2] == "models"
        and parts[4] == "versions"
        and parts[6] == "infer"
    ):
        return Route(parts[3], parts[5]) if parts[3] and parts[5] else None
    if len(parts) == 4 and parts[1] == "v1" and parts[2] == "models":
        model, colon, verb = parts[3].rpartition(":")
        if colon and verb == "predict" and model:
            return Route(model, None, v1=True)
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Headers:
    """The request headers the data plane reads."""

    content_length: str | None = None
    header_length: str | None = None
    """``Inference-Header-Content-Length`` (binary tensor extension)."""

    @staticmethod
    def of(scope: Scope) -> "Headers":
        content_length = header_length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                content_length = value.decode("latin-1")
            elif name == b"inference-header-content-length":
                header_length = value.decode("latin-1")
        return Headers(content_length, header_length)


async def serve(
    ctx: ServiceContext, route: Route, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one data-plane request; counted under its model if that model is loaded."""
    observed = ctx.registry.is_loaded(route.model)
    started = time.perf_counter()
    try:
        reply = await answer(ctx, route, Headers.of(scope), receive)
    except ClientDisconnect:
        return
    except Exception:
        if observed:  # uvicorn answers 500 and logs it
            ctx.metrics.observe_request(route.model, 500, "http", started)
        raise
    if observed:
        ctx.metrics.observe_request(route.model, reply.status, "http", started)
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [
                (b"content-type", reply.content_type),
                (b"content-length", b"%d" % len(reply.body)),
                *reply.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})


async def answer(ctx: ServiceContext, route: Route, headers: Headers, receive: Receive) -> Reply:
    """The reply to a data-plane request, errors included."""
    try:
        if route.v1:
            return await _predict_v1(ctx, route, headers, receive)
        return await _infer(ctx, route, headers, receive)
    except ServiceError as exc:
        status, body, extra = error_reply(exc)
        return Reply(status, body, _JSON, extra)


async def _infer(ctx: ServiceContext, route: Route, headers: Headers, receive: Receive) -> Reply:
    version = None if route.version is None else parse_version(route.version)
    model = await ctx.registry.get_version(route.model, version)
    header_length = declared_length(headers.header_length, "Inference-Header-Content-Length")
    bounds = model.body_bounds
    if header_length is not None and header_length > bounds.json:
        raise PayloadTooLarge(
            f"Inference-Header-Content-Length of {header_length} bytes is over the "
            f"{bounds.json} bytes of {bounds.explain(None)}"
        )
    declared = declared_length(headers.content_length)
    bound = bounds.v2(header_length)
    explain = lambda: bounds.explain(header_length)  # noqa: E731
    async with ctx.bodies.read(receive, declared, bound, explain) as body:
        if len(body) > THREAD_DECODE_BYTES:
            req = await asyncio.to_thread(decode_infer_request, body, model.config, header_length)
        else:
            req = decode_infer_request(body, model.config, header_length)
        outputs = await model.infer(req.inputs, req.batch_size)
    content, json_length = encode_infer_response(
        route.model, str(model.version), req, outputs, model.config
    )
    if json_length is None:
        return Reply(200, content)
    return Reply(
        200, content, _BINARY, ((b"inference-header-content-length", b"%d" % json_length),)
    )


async def _predict_v1(
    ctx: ServiceContext, route: Route, headers: Headers, receive: Receive
) -> Reply:
    model = ctx.registry.get(route.model)
    bounds = model.body_bounds
    declared = declared_length(headers.content_length)
    async with ctx.bodies.read(receive, declared, bounds.v1, bounds.explain_v1) as body:
        inputs = decode_v1_instances(body, model.config)
        batch = next(iter(inputs.values())).shape[0]
        outputs = await model.infer(inputs, batch)
    return Reply(200, encode_v1_predictions(outputs, model.config))
