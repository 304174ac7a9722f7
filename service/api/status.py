"""``GET /``: the status page; gathers each loaded model's versions, drift and adaptation for
``render_status``."""

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.adaptation.loop import AdaptationLoop
from service.adaptation.report import AdaptationReport, adaptation_report, configured
from service.api.context import context
from service.api.versions import VersionEntry, shown_versions
from service.drift.report import VersionDrift, named_snapshot
from service.registry import LoadedModel
from service.status_page import ModelStatus, render_status

router = APIRouter()


def _drift(model: LoadedModel) -> VersionDrift | None:
    if model.drift is None:
        return None
    return named_snapshot(model.name, model.version, model.drift.snapshot(per_channel=False))


def _adaptation(model: LoadedModel, loop: AdaptationLoop) -> AdaptationReport | None:
    if not configured(model.config.adaptation):
        return None
    return adaptation_report(model, loop.state(model.name))


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def status_page(request: Request) -> HTMLResponse:
    ctx = context(request)
    # No await between listing and reading: the registry cannot change under us.
    models = [ctx.registry.get(name) for name in ctx.registry.names()]
    drifts = [_drift(model) for model in models]
    adaptations = [_adaptation(model, ctx.adaptation) for model in models]

    def read_versions() -> list[list[VersionEntry]]:
        return [shown_versions(ctx.repository, model.name, model.config) for model in models]

    versions = await asyncio.to_thread(read_versions)
    statuses: list[ModelStatus] = [
        {
            "name": model.name,
            "platform": model.backend.platform,
            "version": str(model.version),
            "versions": entries,
            "drift": drift,
            "adaptation": adaptation,
        }
        for model, drift, adaptation, entries in zip(
            models, drifts, adaptations, versions, strict=True
        )
    ]
    return HTMLResponse(render_status(statuses))
