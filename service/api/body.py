"""Reading request bodies under a size limit, refusing oversized ones before reading them whole."""

from starlette.requests import Request

from service.errors import InvalidInput, PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
