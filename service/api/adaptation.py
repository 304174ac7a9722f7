"""``GET /v2/models/{m}/adaptation``: settings, captured traffic, alarm state, decisions."""

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service.api.context import context, loaded_model
from service.api.openapi import ERROR_RESPONSES
from service.api.responses import json_response

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/v2/models/{model_name}/adaptation")
async def adaptation(request: Request, model_name: str) -> Response:
    model = await loaded_model(request, model_name, None)
    state = context(request).adaptation.state(model_name)
    capture = model.capture
    watch = state.watch
    return json_response(
        {
            "name": model_name,
            "version": str(model.version),
            "settings": model.config.adaptation.model_dump(),
            "capture": None
            if capture is None
            else {"capacity": capture.capacity, "held": capture.held, "seen": capture.seen},
            "alarmed": state.alarmed,
            "deciding": state.busy,
            "watching": None
            if watch is None
            else {"version": str(watch.version), "previous": str(watch.previous)},
            "decisions": list(reversed(state.decisions)),
        }
    )
