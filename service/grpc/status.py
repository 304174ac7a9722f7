"""The one place that knows gRPC status codes: ``ServiceError`` -> status, HTTP's message.

The table mirrors ``service.api.errors.STATUS``: 400 -> INVALID_ARGUMENT, 401 ->
UNAUTHENTICATED, 404 -> NOT_FOUND, 409 -> ABORTED, 413 and 507 -> RESOURCE_EXHAUSTED, 503 ->
UNAVAILABLE (which gRPC clients treat as retryable, as HTTP clients treat 503 with
``Retry-After``), 408 and 504 -> DEADLINE_EXCEEDED.
"""

import logging
from typing import Any, NoReturn, TypeAlias

import grpc

from service import errors

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
"""The servicer context of any RPC (grpc ships no types: this is ``Any`` to mypy)."""

CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.BodyTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.Overloaded: grpc.StatusCode.UNAVAILABLE,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.Timeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.InsufficientStorage: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def code_of(exc: errors.ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


async def abort(context: Context, exc: Exception) -> NoReturn:
    """End the call with ``exc``'s status and message; anything but a ``ServiceError`` is a
    bug, logged here and answered INTERNAL without its details (as HTTP answers 500)."""
    if isinstance(exc, errors.ServiceError):
        await context.abort(code_of(exc), str(exc))
    log.error("unhandled error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")
    raise AssertionError("unreachable: ServicerContext.abort raises")
