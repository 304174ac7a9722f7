"""``create_app(settings)``: the FastAPI application; models load in the lifespan, not at import."""

import functools
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service import __version__
from service.adaptation.loop import AdaptationLoop
from service.api import adaptation as adaptation_routes
from service.api import drift, fastpath, metrics, models, recalibration, repository, status, v2
from service.api.body import BodyReader
from service.api.context import ServiceContext
from service.api.errors import install_error_handlers
from service.drift.collector import DriftCollector
from service.grpc import server as grpc_server
from service.heap import tune as tune_collector
from service.metrics import ServiceMetrics, StateCollector
from service.recalibration.runner import Recalibrator
from service.registry import ModelRegistry
from service.repository import ModelRepository
from service.settings import ServiceSettings
from service.watcher import RepositoryWatcher

log = logging.getLogger(__name__)


def _admin_token(settings: ServiceSettings) -> str:
    if settings.admin_token:
        return settings.admin_token
    token = secrets.token_urlsafe(32)
    # Printed once, so the operator who started the server can use the admin routes.
    print(
        f"bnserve: generated admin token (set BNSERVE_ADMIN_TOKEN to choose one): {token}",
        file=sys.stderr,
        flush=True,
    )
    return token


class ServiceApp(FastAPI):
    """FastAPI, with the data plane served ahead of its middleware and router (``fastpath``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = fastpath.match(scope["method"], scope["path"])
            ctx = getattr(self.state, "context", None)
            if route is not None and ctx is not None:
                await fastpath.serve(ctx, route, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: ServiceSettings) -> FastAPI:
    repo = ModelRepository(settings.models)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_collector()
        service_metrics = ServiceMetrics()
        registry = ModelRegistry(
            repo,
            threads=settings.model_threads,
            spinning=settings.ort_spinning,
            batch_observer=lambda model: service_metrics.batch_size.labels(model).observe,
            on_load=service_metrics.model_loaded,
            request_timeout=settings.request_timeout,
            inline_call_seconds=settings.inline_call_us / 1e6,
        )
        service_metrics.add_collector(StateCollector(registry.model_states))
        service_metrics.add_collector(DriftCollector(registry.drift_monitors))
        recalibrator = Recalibrator(
            repo,
            registry,
            max_samples=settings.recalibration_max_samples,
            max_bytes=settings.recalibration_max_bytes,
            threads=settings.model_threads,
            metrics=service_metrics,
            idle_timeout=settings.recalibration_idle_timeout,
        )
        bodies = BodyReader(
            settings.max_body_bytes, settings.max_inflight_bytes, settings.request_timeout
        )
        adaptation = AdaptationLoop(
            registry, recalibrator, service_metrics, settings.adaptation_interval
        )
        ctx = ServiceContext(
            settings,
            repo,
            registry,
            _admin_token(settings),
            recalibrator,
            service_metrics,
            bodies,
            adaptation,
        )
        app.state.context = ctx
        watcher = RepositoryWatcher(registry, settings.poll_interval)
        grpc = None
        try:
            for stale in repo.sweep_temporaries():
                log.warning("removed %s, left by an interrupted write", stale)
            await registry.load_all(repo.model_names())
            watcher.start()
            adaptation.start()
            if settings.grpc_port:  # on the same loop and context as HTTP; 0 turns it off
                grpc = await grpc_server.start(ctx)
                ctx.drains.append(
                    functools.partial(grpc_server.stop, grpc, settings.graceful_timeout)
                )
            ctx.ready = True
            yield
        finally:
            ctx.ready = False
            ctx.start_draining()  # no-op for drains a SIGTERM began: they are awaited here
            await ctx.drained()
            await watcher.stop()
            await adaptation.stop()
            recalibrator.close()
            await registry.close()

    app = ServiceApp(
        title="bnserve",
        version=__version__,
        description="Inference serving for BatchNorm networks (Open Inference Protocol).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(v2.router)
    app.include_router(models.router)
    app.include_router(repository.router)
    app.include_router(recalibration.router)
    app.include_router(metrics.router)
    app.include_router(drift.router)
    app.include_router(adaptation_routes.router)
    app.include_router(status.router)
    return app
