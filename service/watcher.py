"""Follow changes that other replicas make to a shared model repository.

Every ``interval`` seconds, for each loaded model, read its ``active`` pointer; when it names
another version than the one serving, load that version fully and swap it in (no pointer
write). Versions are immutable and written by rename, so whatever is visible is complete.
"""

import asyncio
import contextlib
import logging

from service.errors import ServiceError
from service.registry import ModelRegistry

log = logging.getLogger(__name__)


class RepositoryWatcher:
    def __init__(self, registry: ModelRegistry, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll_once(self) -> None:
        repository = self._registry.repository
        for name in self._registry.names():
            try:
                version = await asyncio.to_thread(repository.active_version, name)
                if version != self._registry.get(name).version:
                    await self._registry.follow(name)
            except ServiceError as exc:  # e.g. a version another replica is still writing
                log.warning("repository poll of %s: %s", name, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.poll_once()
