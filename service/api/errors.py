"""The one place that knows HTTP status codes: ServiceError -> ``{"error": "..."}``."""

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from service import errors
from service.api.responses import json_bytes, json_response

STATUS: dict[type[errors.ServiceError], int] = {
    errors.InvalidInput: 400,
    errors.ConfigError: 400,
    errors.Unauthorized: 401,
    errors.ModelNotFound: 404,
    errors.BodyTimeout: 408,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.ModelNotReady: 503,
    errors.Overloaded: 503,
    errors.ShuttingDown: 503,
    errors.Timeout: 504,
    errors.InsufficientStorage: 507,
}

_HEADERS: dict[type[errors.ServiceError], dict[str, str]] = {
    errors.Unauthorized: {"WWW-Authenticate": "Bearer"},
    errors.Overloaded: {"Retry-After": "1"},
    # The rest of the body may still come; closing is the only way to be done with it.
    errors.BodyTimeout: {"Connection": "close"},
}


def status_of(exc: errors.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_reply(exc: errors.ServiceError) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
    """Status, JSON body and extra headers of the answer to ``exc``, for raw ASGI senders."""
    headers = _HEADERS.get(type(exc), {})
    return (
        status_of(exc),
        json_bytes({"error": str(exc)}),
        tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ),
    )


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


async def _service_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ServiceError)
    return error_response(status_of(exc), str(exc), _HEADERS.get(type(exc)))


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return error_response(400, problems)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
