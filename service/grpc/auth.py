"""The admin check of gRPC calls: metadata ``authorization: Bearer <token>``, compared as
HTTP compares its header (``service.api.auth.check_bearer``, constant time)."""

from service.api.auth import check_bearer
from service.grpc.status import Context


def require_admin(context: Context, token: str) -> None:
    """Raise ``Unauthorized`` unless the call carries the admin token."""
    header = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            header = value
    check_bearer(header, token)
