"""Open Inference Protocol data plane: health, server metadata, inference (V2 and V1)."""

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.api.context import context, loaded_model
from service.api.errors import error_response, status_of
from service.api.openapi import ERROR_RESPONSES, INFER, INFER_RESPONSES, V1_PREDICT, V1_RESPONSES
from service.api.responses import json_response
from service.backends.base import Arrays
from service.errors import InvalidInput, PayloadTooLarge, ServiceError, Timeout
from service.protocol.v1 import decode_v1_instances, encode_v1_predictions
from service.protocol.v2 import decode_infer_request, encode_infer_response
from service.settings import ServiceSettings

router = APIRouter(responses=ERROR_RESPONSES)

EXTENSIONS = ["binary_tensor_data", "model_repository", "bn_recalibration", "bn_drift"]
_THREAD_DECODE_BYTES = 256 * 1024
"""Bodies larger than this are decoded off the event loop."""


@router.get("/v2/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    if context(request).ready:
        return json_response({"ready": True})
    return error_response(400, "server is not ready: models are still loading")


@router.get("/v2")
async def server_metadata() -> Response:
    return json_response({"name": "bnserve", "version": __version__, "extensions": EXTENSIONS})


def _header_length(request: Request) -> int | None:
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"invalid Inference-Header-Content-Length header {value!r}")
    return int(value)


async def _observed(
    request: Request, model_name: str, call: Callable[[], Awaitable[Response]]
) -> Response:
    """Run ``call``, counting it under ``model_name`` if that model exists (bounded labels)."""
    ctx = context(request)
    if not ctx.registry.is_loaded(model_name):
        return await call()
    started = time.perf_counter()
    code = 500
    try:
        response = await call()
        code = response.status_code
        return response
    except ServiceError as exc:
        code = status_of(exc)
        raise
    finally:
        ctx.metrics.requests.labels(model_name, str(code)).inc()
        ctx.metrics.request_duration.labels(model_name).observe(time.perf_counter() - started)


async def _infer(request: Request, model_name: str, version: str | None) -> Response:
    ctx = context(request)
    model = await loaded_model(request, model_name, version)
    header_length = _header_length(request)
    bounds = model.body_bounds
    if header_length is not None and header_length > bounds.json:
        raise PayloadTooLarge(
            f"Inference-Header-Content-Length of {header_length} bytes is over the "
            f"{bounds.json} bytes of {bounds.explain(None)}"
        )
    bound = bounds.v2(header_length)
    async with ctx.bodies.read(request, bound, lambda: bounds.explain(header_length)) as body:
        if len(body) > _THREAD_DECODE_BYTES:
            req = await asyncio.to_thread(decode_infer_request, body, model.config, header_length)
        else:
            req = decode_infer_request(body, model.config, header_length)
        outputs = await _with_timeout(model.infer(req.inputs, req.batch_size), ctx.settings)
    content, json_length = encode_infer_response(
        model_name, str(model.version), req, outputs, model.config
    )
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


async def _with_timeout(call: Awaitable[Arrays], settings: ServiceSettings) -> Arrays:
    try:
        async with asyncio.timeout(settings.request_timeout):
            return await call
    except TimeoutError:
        raise Timeout(
            f"no result within the request timeout of {settings.request_timeout} s"
        ) from None


@router.post("/v2/models/{model_name}/infer", openapi_extra=INFER, responses=INFER_RESPONSES)
async def infer(request: Request, model_name: str) -> Response:
    return await _observed(request, model_name, lambda: _infer(request, model_name, None))


@router.post(
    "/v2/models/{model_name}/versions/{version}/infer",
    openapi_extra=INFER,
    responses=INFER_RESPONSES,
)
async def infer_version(request: Request, model_name: str, version: str) -> Response:
    return await _observed(request, model_name, lambda: _infer(request, model_name, version))


@router.post("/v1/models/{model_name}:predict", openapi_extra=V1_PREDICT, responses=V1_RESPONSES)
async def predict_v1(request: Request, model_name: str) -> Response:
    return await _observed(request, model_name, lambda: _predict_v1(request, model_name))


async def _predict_v1(request: Request, model_name: str) -> Response:
    ctx = context(request)
    model = ctx.registry.get(model_name)
    bounds = model.body_bounds
    async with ctx.bodies.read(request, bounds.v1, bounds.explain_v1) as body:
        inputs = decode_v1_instances(body, model.config)
        batch = next(iter(inputs.values())).shape[0]
        outputs = await _with_timeout(model.infer(inputs, batch), ctx.settings)
    return Response(encode_v1_predictions(outputs, model.config), media_type="application/json")
