"""Reading request bodies under a size limit, refusing oversized ones before reading them whole."""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from service.errors import BodyTimeout, InvalidInput, Overloaded, PayloadTooLarge

Explain = Callable[[], str]
"""Says where a limit comes from, for the 413 message; called only when it is exceeded."""


def declared_length(value: str | None, header: str = "Content-Length") -> int | None:
    """A length header's value as a number (``Content-Length`` by default: None for a chunked
    body); ``InvalidInput`` naming ``header`` if it is not one."""
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"invalid {header} header {value!r}")
    return int(value)


async def read_body(request: Request, limit: int) -> bytes:
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class BodyReader:
    """Reads the app's inference bodies, each under its own limit and all together under
    ``max_inflight_bytes``.

    A body holds its share of the in-flight budget from before it is read until the response
    is made (binary inputs are views on the body, so it lives that long): its declared
    ``Content-Length`` up front, a chunked body's bytes as they arrive. A body that would
    take the budget past ``max_inflight_bytes`` gets ``Overloaded`` (503, retry later); one
    larger than the whole budget can never fit and gets ``PayloadTooLarge``. Used from the
    event loop only, so the counter needs no lock.

    A body must arrive whole within ``timeout`` seconds (``BodyTimeout``, 408): a client that
    declares a length and goes quiet would otherwise hold its share of the budget for good.
    """

    def __init__(self, max_body_bytes: int, max_inflight_bytes: int, timeout: float) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_inflight_bytes = max_inflight_bytes
        self.timeout = timeout
        self.inflight = 0
        """Bytes held now by bodies being read or served."""

    @asynccontextmanager
    async def read(
        self, receive: Receive, declared: int | None, bound: int, explain: Explain
    ) -> AsyncIterator[bytes]:
        """The body that ASGI ``receive`` delivers (``declared`` bytes, None if chunked), at
        most ``bound`` bytes (``explain`` says why), held in the budget until the ``async
        with`` block ends. ``ClientDisconnect`` if the client goes away first."""
        limit, explain = self._limit(bound, explain)
        held = 0
        try:
            if declared is not None:
                if declared > limit:  # refused before a byte of the body is read
                    raise PayloadTooLarge(
                        f"request body of {declared} bytes is over the limit of {limit} "
                        f"bytes, {explain()}"
                    )
                held = self._take(declared, 0)
            chunks: list[bytes] = []
            size = 0
            try:
                async with asyncio.timeout(self.timeout):
                    more = True
                    while more:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            raise ClientDisconnect()
                        chunk: bytes = message.get("body", b"")
                        more = message.get("more_body", False)
                        size += len(chunk)
                        if size > limit:
                            raise PayloadTooLarge(
                                f"request body is over the limit of {limit} bytes after {size} "
                                f"bytes were received, {explain()}"
                            )
                        if size > held:
                            held += self._take(size - held, held)
                        chunks.append(chunk)
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.timeout} s "
                    f"(request_timeout): {size} bytes received"
                ) from None
            yield b"".join(chunks)
        finally:
            self.inflight -= held

    @contextmanager
    def hold(self, size: int, bound: int, explain: Explain) -> Iterator[None]:
        """Hold ``size`` bytes of a body that arrived whole (a gRPC message) in the budget
        until the ``with`` block ends, under the same limits and messages as ``read``."""
        limit, explain = self._limit(bound, explain)
        if size > limit:
            raise PayloadTooLarge(
                f"request body of {size} bytes is over the limit of {limit} bytes, {explain()}"
            )
        held = self._take(size, 0)
        try:
            yield
        finally:
            self.inflight -= held

    def _limit(self, bound: int, explain: Explain) -> tuple[int, Explain]:
        if bound <= self.max_body_bytes and bound <= self.max_inflight_bytes:
            return bound, explain
        if self.max_body_bytes <= self.max_inflight_bytes:
            return self.max_body_bytes, lambda: "the server's max_body_bytes"
        return self.max_inflight_bytes, lambda: "the server's max_inflight_bytes for all bodies"

    def _take(self, size: int, held: int) -> int:
        if self.inflight + size > self.max_inflight_bytes:
            raise Overloaded(
                f"other request bodies being read or served hold {self.inflight - held} "
                f"bytes; this one's {held + size} would take them past max_inflight_bytes "
                f"({self.max_inflight_bytes}): retry later"
            )
        self.inflight += size
        return size
