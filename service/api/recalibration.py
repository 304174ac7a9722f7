"""BatchNorm recalibration extension: recalibrate, list versions, activate (admin routes)."""

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service.api.auth import require_admin
from service.api.context import context, loaded_model
from service.api.openapi import ERROR_RESPONSES
from service.api.responses import json_response
from service.api.versions import version_listing
from service.errors import PayloadTooLarge, UnsupportedMediaType
from service.recalibration.params import RecalibrationParams
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
    request: Request,
    model_name: str,
    version: str | None,
    params: RecalibrationParams,
    source: str,
) -> Response:
    ctx = context(request)
    if source == "traffic":  # the captured samples, not the body
        model = await loaded_model(request, model_name, version)
        return json_response(await ctx.adaptation.from_traffic(model, params))
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
    try:
        outcome = await ctx.recalibrator.run(model, params, content_type, request.stream())
    except ClientDisconnect:
        log.warning("recalibration of %s abandoned: the client disconnected", model_name)
        return Response(status_code=499)
    return json_response(outcome)


Params = Annotated[RecalibrationParams, Depends()]
Source = Annotated[
    Literal["upload", "traffic"],
    Query(
        description="upload: the request body's samples; traffic: the served samples that "
        "the model's [adaptation] capture holds (the body is not read), answered with the "
        "guardrail figures"
    ),
]


@router.post(
    "/v2/models/{model_name}/recalibrate",
    dependencies=[Depends(require_admin)],
    openapi_extra=_STREAM_BODY,
)
async def recalibrate(
    request: Request, model_name: str, params: Params, source: Source = "upload"
) -> Response:
    return await _recalibrate(request, model_name, None, params, source)


@router.post(
    "/v2/models/{model_name}/versions/{version}/recalibrate",
    dependencies=[Depends(require_admin)],
    openapi_extra=_STREAM_BODY,
)
async def recalibrate_version(
    request: Request, model_name: str, version: str, params: Params, source: Source = "upload"
) -> Response:
    return await _recalibrate(request, model_name, version, params, source)


@router.get("/v2/models/{model_name}/versions")
async def versions(request: Request, model_name: str) -> Response:
    repository = context(request).repository
    return json_response(await asyncio.to_thread(version_listing, repository, model_name))


@router.post(
    "/v2/models/{model_name}/versions/{version}/activate", dependencies=[Depends(require_admin)]
)
async def activate(request: Request, model_name: str, version: str) -> Response:
    ctx = context(request)
    model = await ctx.registry.activate(model_name, parse_version(version))
    return json_response({"name": model_name, "active": str(model.version)})
