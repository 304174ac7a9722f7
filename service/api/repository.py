"""Triton's model-repository extension: index, load, unload (load/unload are admin)."""

import asyncio
from typing import Literal, TypedDict

import orjson
from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from service.api.auth import require_admin
from service.api.body import read_body
from service.api.context import ServiceContext, context
from service.api.openapi import ERROR_RESPONSES, INDEX_RESPONSES, REPOSITORY_INDEX
from service.api.responses import json_response
from service.errors import InvalidInput

router = APIRouter(responses=ERROR_RESPONSES)
_INDEX_BODY_LIMIT = 64 * 1024


class _IndexEntry(TypedDict):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


def _index_entry(ctx: ServiceContext, name: str) -> _IndexEntry:
    if ctx.registry.is_loaded(name):
        model = ctx.registry.get(name)
        return {"name": name, "version": str(model.version), "state": "READY", "reason": ""}
    return {"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}


@router.post("/v2/repository/index", openapi_extra=REPOSITORY_INDEX, responses=INDEX_RESPONSES)
async def index(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, _INDEX_BODY_LIMIT)
    ready_only = False
    if body.strip():
        try:
            options = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"repository index body is not valid JSON: {exc}") from exc
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise InvalidInput('repository index body must be an object like {"ready": true}')
        ready_only = options.get("ready", False)
    names = await asyncio.to_thread(ctx.repository.model_names)
    entries = [_index_entry(ctx, name) for name in names]
    if ready_only:
        entries = [e for e in entries if e["state"] == "READY"]
    return json_response(entries)


@router.post("/v2/repository/models/{model_name}/load", dependencies=[Depends(require_admin)])
async def load(request: Request, model_name: str) -> Response:
    ctx = context(request)
    await ctx.registry.load(model_name)
    return json_response(_index_entry(ctx, model_name))


@router.post("/v2/repository/models/{model_name}/unload", dependencies=[Depends(require_admin)])
async def unload(request: Request, model_name: str) -> Response:
    ctx = context(request)
    await ctx.registry.unload(model_name)
    return json_response(_index_entry(ctx, model_name))
