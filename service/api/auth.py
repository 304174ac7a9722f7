"""Bearer-token check for admin routes (recalibrate, activate, load/unload, drift reset)."""

import hmac

from starlette.requests import Request

from service.api.context import context
from service.errors import Unauthorized


def check_bearer(header: str, expected: str) -> None:
    """``header`` (an ``Authorization`` value) must be ``Bearer <expected>``; compared in
    constant time. Shared with the gRPC edge, whose metadata carries the same header."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin operation: missing 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("admin operation: invalid bearer token")


def require_admin(request: Request) -> None:
    """FastAPI dependency: the request must carry ``Authorization: Bearer <admin token>``."""
    check_bearer(request.headers.get("authorization", ""), context(request).admin_token)
