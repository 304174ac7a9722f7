"""``GET /metrics``: Prometheus text format from the service's own registry."""

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from service.api.context import context
from service.api.openapi import ERROR_RESPONSES

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    registry = context(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
