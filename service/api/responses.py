"""JSON responses encoded by orjson (numpy arrays serialized natively, no pydantic round trip)."""

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=_OPTIONS),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
