"""``GET /``: the status page; gathers plain dicts and hands them to ``render_status``."""

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.api.context import ServiceContext, context
from service.errors import ServiceError
from service.status_page import render_status

router = APIRouter()


def _versions(ctx: ServiceContext, name: str) -> list[dict[str, Any]]:
    repo = ctx.repository
    config = ctx.registry.get(name).config
    try:
        active: int | None = repo.active_version(name, config)
    except ServiceError:  # a broken ``active`` pointer: show the versions, mark none
        active = None
    entries = []
    for version in repo.versions(name, config):
        try:
            provenance = repo.provenance(name, version)
        except ServiceError as exc:  # one broken file must not take the whole page down
            provenance = {"error": str(exc)}
        entry = {"version": str(version), "active": version == active, "provenance": provenance}
        entries.append(entry)
    return entries


def _model(ctx: ServiceContext, name: str) -> dict[str, Any]:
    model = ctx.registry.get(name)
    drift = None
    if model.drift is not None:
        drift = {"version": str(model.version)} | model.drift.snapshot(per_channel=False)
    return {
        "name": name,
        "platform": model.backend.platform,
        "version": str(model.version),
        "versions": _versions(ctx, name),
        "drift": drift,
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request) -> HTMLResponse:
    ctx = context(request)
    # No await between listing and reading: the registry cannot change under us.
    return HTMLResponse(render_status([_model(ctx, name) for name in ctx.registry.names()]))
