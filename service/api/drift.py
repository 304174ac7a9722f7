"""Per-layer drift as JSON (with per-channel detail), and its reset (admin)."""

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from service.api.auth import require_admin
from service.api.context import loaded_model
from service.api.openapi import ERROR_RESPONSES
from service.api.responses import json_response
from service.drift.report import named_snapshot
from service.errors import InvalidInput
from service.registry import LoadedModel

router = APIRouter(responses=ERROR_RESPONSES)


def _monitored(model: LoadedModel) -> Response:
    if model.drift is None:
        raise InvalidInput(
            f"model '{model.name}' has no drift monitoring "
            "(no layer with running statistics, or [drift] enabled = false)"
        )
    return json_response(named_snapshot(model.name, model.version, model.drift.snapshot()))


@router.get("/v2/models/{model_name}/drift")
async def drift(request: Request, model_name: str) -> Response:
    return _monitored(await loaded_model(request, model_name, None))


@router.get("/v2/models/{model_name}/versions/{version}/drift")
async def version_drift(request: Request, model_name: str, version: str) -> Response:
    return _monitored(await loaded_model(request, model_name, version))


@router.post("/v2/models/{model_name}/drift/reset", dependencies=[Depends(require_admin)])
async def reset(request: Request, model_name: str) -> Response:
    model = await loaded_model(request, model_name, None)
    if model.drift is not None:
        model.drift.reset()
    if model.capture is not None:  # the captured traffic belongs to the window it restarts
        model.capture.restart()
    return _monitored(model)
