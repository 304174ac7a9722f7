"""Admission of gRPC calls, closed first when the server stops.

``grpc.aio``'s ``server.stop(grace)`` lets calls whose handler runs finish, but cancels the
calls grpc has received and not yet handed to a handler (the client sees CANCELLED, not
UNAVAILABLE). So a stop first closes this gate: new calls are answered UNAVAILABLE by the
handler itself, the calls already admitted finish, and only then is the server stopped, with
(almost) nothing left waiting in grpc's queue.
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import ShuttingDown


class Gate:
    """Used on the event loop only."""

    def __init__(self) -> None:
        self._open = True
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for one call; ``ShuttingDown`` once the gate is closed."""
        if not self._open:
            raise ShuttingDown("the server is shutting down: retry, on another replica if any")
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def close(self) -> None:
        """Admit no more calls; return once the admitted ones are done (bound it with
        ``asyncio.timeout``)."""
        self._open = False
        await self._idle.wait()
