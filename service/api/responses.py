"""JSON responses encoded by orjson (numpy arrays serialized natively, no pydantic round trip)."""

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_bytes(content: Any) -> bytes:
    """``content`` as the JSON every response body carries (gRPC replies embed the same)."""
    return orjson.dumps(content, option=_OPTIONS)


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json_bytes(content),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
