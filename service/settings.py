"""Service settings from flags and ``BNSERVE_*`` environment variables."""

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BNSERVE_", extra="forbid", frozen=True)

    models: Path = Path("models")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8001
    """Port of the gRPC Open Inference Protocol server (same process as HTTP); 0 turns it off."""
    admin_token: str | None = None
    """Bearer token for admin routes; a random one is generated at start when unset."""
    max_body_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    """Largest inference request body; each model's own bound may be lower
    (``service.protocol.limits``)."""
    max_inflight_bytes: Annotated[int, Field(ge=1)] = 256 * 1024 * 1024
    """Most bytes of inference request bodies held at once, all requests together (503 past it)."""
    recalibration_max_bytes: Annotated[int, Field(ge=1)] = 256 * 1024**3
    """Largest recalibration stream, in bytes."""
    recalibration_max_samples: Annotated[int, Field(ge=1)] = 100_000_000
    """Most samples in one recalibration stream."""
    recalibration_idle_timeout: Annotated[float, Field(gt=0.0)] = 30.0
    """Seconds a recalibration upload may go without a byte arriving (408 after that)."""
    poll_interval: Annotated[float, Field(ge=0.0)] = 2.0
    """Seconds between checks of the repository for versions activated elsewhere; 0: never."""
    graceful_timeout: Annotated[int, Field(ge=0)] = 30
    """Seconds a stopping server waits for in-flight requests."""
    request_timeout: Annotated[float, Field(gt=0.0)] = 60.0
    """Longest an inference request may wait for its result (504 after that)."""
    ort_spinning: bool | None = None
    """Let onnxruntime's intra-op threads busy-wait between runs: lower latency, but on few
    cores less throughput for small models. Unset: on for models whose one-sample call takes
    1 ms or more, off for smaller ones."""
    inline_call_us: Annotated[float, Field(ge=0.0)] = 100.0
    """A model call measured (at load) to take at most this many microseconds runs on the
    event loop instead of the model's thread: far below the cost of handing it to a thread
    and back. 0: every call runs on the model's thread."""
    model_threads: Annotated[int, Field(ge=0)] = 0
    """Intra-op threads per model session; 0 lets the runtime choose."""
    log_level: str = "info"
    adaptation_interval: Annotated[float, Field(gt=0.0)] = 1.0
    """Seconds between checks of the adaptation loop (models with ``[adaptation] trigger``)."""
