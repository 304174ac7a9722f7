"""``GET /v2/models/{m}/adaptation``: settings, captured traffic, alarm state, decisions."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service.adaptation.report import adaptation_report
from service.api.context import context, loaded_model
from service.api.openapi import ERROR_RESPONSES
from service.api.responses import json_response

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/v2/models/{model_name}/adaptation")
async def adaptation(request: Request, model_name: str) -> Response:
    model = await loaded_model(request, model_name, None)
    report = adaptation_report(model, context(request).adaptation.state(model_name))
    watch = report["watching"]
    return json_response(
        {
            "name": model_name,
            "version": str(model.version),
            "settings": report["settings"].model_dump(),
            "capture": report["capture"],
            "alarmed": report["alarmed"],
            "deciding": report["deciding"],
            "watching": None
            if watch is None
            else {"version": str(watch.version), "previous": str(watch.previous)},
            "decisions": report["decisions"],
        }
    )
