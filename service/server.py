"""Running the app under uvicorn with a graceful stop.

On SIGTERM/SIGINT uvicorn stops accepting connections and waits for in-flight requests (up to
``graceful_timeout``) before the lifespan shutdown. Recalibrations are aborted at once instead
of being waited for: they end with 503 and write nothing.
"""

import asyncio
import contextlib
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.api.context import ServiceContext
from service.settings import ServiceSettings


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        ctx = getattr(self._app.state, "context", None)
        if isinstance(ctx, ServiceContext):
            with contextlib.suppress(RuntimeError):  # no loop running: nothing to abort
                loop = asyncio.get_running_loop()
                loop.call_soon_threadsafe(ctx.recalibrator.stop)
                # gRPC drains alongside HTTP: new calls refused now, calls in flight finish.
                loop.call_soon_threadsafe(ctx.start_draining)
        super().handle_exit(sig, frame)


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    # One process, one event loop: scale with replicas, not workers (each worker would hold
    # its own model copies and metrics).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        # Nothing reads the client's address or scheme (no access log, no absolute URLs):
        # rewriting them from X-Forwarded-* on every request would be pure cost.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.graceful_timeout,
    )
    GracefulServer(config, app).run()
