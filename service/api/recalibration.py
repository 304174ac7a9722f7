"""BatchNorm recalibration extension: recalibrate, list versions, activate (admin routes)."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service.api.auth import require_admin
from service.api.context import context, loaded_model
from service.api.openapi import ERROR_RESPONSES
from service.api.responses import json_response
from service.errors import PayloadTooLarge, UnsupportedMediaType
from service.recalibration.params import make_params
from service.repository import parse_version
from service.streams import MEDIA_TYPES

router = APIRouter(responses=ERROR_RESPONSES)
log = logging.getLogger(__name__)

_STREAM_BODY = {
    "requestBody": {
        "required": True,
        "description": "Unlabeled samples: a .npy file, raw samples of the single input, "
        "or one JSON sample per line.",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("application/x-npy", "application/octet-stream")
        }
        | {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
}


async def _recalibrate(
    request: Request, model_name: str, version: str | None, query: dict[str, Any]
) -> Response:
    ctx = context(request)
    content_type = request.headers.get("content-type")
    if not content_type:
        raise UnsupportedMediaType(
            f"a Content-Type header is required: one of {', '.join(MEDIA_TYPES)}"
        )
    declared = request.headers.get("content-length", "")
    limit = ctx.settings.recalibration_max_bytes
    if declared.isdigit() and int(declared) > limit:  # refused before a byte is read
        raise PayloadTooLarge(
            f"recalibration body of {declared} bytes is over the limit of {limit} bytes"
        )
    model = await loaded_model(request, model_name, version)
    params = make_params(model.config.recalibration, **query)
    try:
        report = await ctx.recalibrator.run(model, params, content_type, request.stream())
    except ClientDisconnect:
        log.warning("recalibration of %s abandoned: the client disconnected", model_name)
        return Response(status_code=499)
    return json_response(report)


def _query(
    mode: Annotated[str | None, Query(description="cumulative, population or ema")] = None,
    batch_size: Annotated[int | None, Query(ge=2, le=65_536)] = None,
    prior: Annotated[float | None, Query(ge=0)] = None,
    momentum: Annotated[float | None, Query(gt=0, le=1)] = None,
    layers: Annotated[str | None, Query(description="comma-separated name globs")] = None,
    dry_run: bool = False,
    activate: bool = True,
) -> dict[str, Any]:
    return {
        "mode": mode,
        "batch_size": batch_size,
        "prior": prior,
        "momentum": momentum,
        "layers": layers,
        "dry_run": dry_run,
        "activate": activate,
    }


Query_ = Annotated[dict[str, Any], Depends(_query)]


@router.post(
    "/v2/models/{model_name}/recalibrate",
    dependencies=[Depends(require_admin)],
    openapi_extra=_STREAM_BODY,
)
async def recalibrate(request: Request, model_name: str, query: Query_) -> Response:
    return await _recalibrate(request, model_name, None, query)


@router.post(
    "/v2/models/{model_name}/versions/{version}/recalibrate",
    dependencies=[Depends(require_admin)],
    openapi_extra=_STREAM_BODY,
)
async def recalibrate_version(
    request: Request, model_name: str, version: str, query: Query_
) -> Response:
    return await _recalibrate(request, model_name, version, query)


@router.get("/v2/models/{model_name}/versions")
async def versions(request: Request, model_name: str) -> Response:
    ctx = context(request)
    config = ctx.repository.config(model_name)
    active = ctx.repository.active_version(model_name, config)
    entries = [
        {
            "version": str(v),
            "active": v == active,
            "provenance": ctx.repository.provenance(model_name, v),
        }
        for v in ctx.repository.versions(model_name, config)
    ]
    return json_response({"name": model_name, "active": str(active), "versions": entries})


@router.post(
    "/v2/models/{model_name}/versions/{version}/activate", dependencies=[Depends(require_admin)]
)
async def activate(request: Request, model_name: str, version: str) -> Response:
    ctx = context(request)
    model = await ctx.registry.activate(model_name, parse_version(version))
    return json_response({"name": model_name, "active": str(model.version)})
