"""Open Inference Protocol data plane: health, server metadata, inference (V2 and V1)."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.api import fastpath
from service.api.context import context
from service.api.errors import error_response
from service.api.openapi import ERROR_RESPONSES, INFER, INFER_RESPONSES, V1_PREDICT, V1_RESPONSES
from service.api.responses import json_response

router = APIRouter(responses=ERROR_RESPONSES)

EXTENSIONS = ["binary_tensor_data", "model_repository", "bn_recalibration", "bn_drift"]


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


def _response(reply: fastpath.Reply) -> Response:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in reply.headers}
    return Response(reply.body, reply.status, headers, reply.content_type.decode("latin-1"))


async def _answer(request: Request, route: fastpath.Route) -> Response:
    """What ``fastpath.serve`` sends, for a request that reached FastAPI's router (when the app
    is mounted under a path prefix, which ``fastpath.match`` does not strip)."""
    headers = fastpath.Headers.of(request.scope)
    return _response(await fastpath.answer(context(request), route, headers, request.receive))


@router.post("/v2/models/{model_name}/infer", openapi_extra=INFER, responses=INFER_RESPONSES)
async def infer(request: Request, model_name: str) -> Response:
    return await _answer(request, fastpath.Route(model_name, None))


@router.post(
    "/v2/models/{model_name}/versions/{version}/infer",
    openapi_extra=INFER,
    responses=INFER_RESPONSES,
)
async def infer_version(request: Request, model_name: str, version: str) -> Response:
    return await _answer(request, fastpath.Route(model_name, version))


@router.post("/v1/models/{model_name}:predict", openapi_extra=V1_PREDICT, responses=V1_RESPONSES)
async def predict_v1(request: Request, model_name: str) -> Response:
    return await _answer(request, fastpath.Route(model_name, None, v1=True))
