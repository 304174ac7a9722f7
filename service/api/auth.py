"""Bearer-token check for admin routes (recalibrate, activate, load/unload, drift reset)."""

import hmac

from starlette.requests import Request

from service.api.context import context
from service.errors import Unauthorized


def require_admin(request: Request) -> None:
    """FastAPI dependency: the request must carry ``Authorization: Bearer <admin token>``."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("admin operation: missing 'Authorization: Bearer <token>' header")
    expected = context(request).admin_token
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("admin operation: invalid bearer token")
