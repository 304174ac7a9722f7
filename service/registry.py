"""Loaded models: name -> serving version (plus versions asked for explicitly), swapped atomically.

A version is loaded fully (in a worker thread) before it replaces the one serving, so requests
never see a half-loaded model; requests already queued on the old version finish on it, then
its batcher and thread are released (MLServer's ``_reload_model`` pattern). After every load
(a start-up's loads: once, at the end), swap and unload the heap is settled
(``service.heap``): full collections stay short.
"""

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from service.adaptation.capture import TrafficCapture
from service.backends.base import Arrays, Backend
from service.backends.cost import CallCost, measure
from service.backends.families import family
from service.batching import DynamicBatcher, Observer
from service.config import ModelConfig
from service.drift.factory import make_monitor
from service.drift.monitor import DriftMonitor
from service.errors import ModelNotFound, ModelNotReady
from service.heap import settle
from service.protocol.limits import BodyBounds, body_bounds
from service.repository import ModelRepository

log = logging.getLogger(__name__)

_MAX_EXTRA_VERSIONS = 2
"""Non-serving versions kept loaded after an explicit ``/versions/{v}`` request."""


def load_backend(
    version_dir: Path, config: ModelConfig, threads: int = 0, spinning: bool | None = None
) -> Backend:
    """Load ``version_dir / config.model_file`` with the family that ``config.backend`` names
    (``Family.load``: ``threads``, ``spinning`` and the ``ConfigError`` raised there)."""
    return family(config.backend).load(version_dir / config.model_file, config, threads, spinning)


@dataclass
class LoadedModel:
    """One model version ready to serve, with its own batcher and model thread."""

    name: str
    version: int
    config: ModelConfig
    backend: Backend
    executor: ThreadPoolExecutor = field(repr=False)
    batcher: DynamicBatcher = field(repr=False)
    drift: DriftMonitor | None = field(default=None, repr=False)
    capture: TrafficCapture | None = field(default=None, repr=False)
    """The served inputs an adaptation learns from (``[adaptation] capture``), or None."""
    cost: CallCost | None = field(default=None, repr=False)
    """Measured at load when calls may run on the event loop (``inline_call_seconds`` > 0)."""

    async def infer(self, inputs: Arrays, batch_size: int) -> Arrays:
        """The outputs for ``inputs``; ``Timeout`` past the registry's request timeout."""
        return await self.batcher.submit(inputs, batch_size)

    @functools.cached_property
    def body_bounds(self) -> BodyBounds:
        """The largest valid request bodies for this version's config, worked out once."""
        return body_bounds(self.name, self.config)

    async def close(self) -> None:
        await self.batcher.close()
        self.executor.shutdown(wait=False)
        if self.drift is not None:
            self.drift.close()


@dataclass
class _Entry:
    config: ModelConfig
    serving: LoadedModel
    extra: dict[int, LoadedModel] = field(default_factory=dict)


def _never_inline(_batch: int) -> bool:
    return False


def _observers(*observers: Observer | None) -> Observer | None:
    """What is told of every served batch: each of ``observers`` that is not None, in order
    (the drift monitor, the traffic capture, the call cost)."""
    chosen = tuple(observer for observer in observers if observer is not None)
    if len(chosen) <= 1:
        return chosen[0] if chosen else None

    def every(inputs: Arrays, batch_size: int, seconds: float) -> None:
        for observer in chosen:
            observer(inputs, batch_size, seconds)

    return every


class ModelRegistry:
    """The models this process serves. All methods run on the event loop."""

    def __init__(
        self,
        repository: ModelRepository,
        threads: int = 0,
        spinning: bool | None = None,
        batch_observer: Callable[[str], Callable[[int], None]] | None = None,
        on_load: Callable[[str, ModelConfig], None] | None = None,
        request_timeout: float = 60.0,
        inline_call_seconds: float = 0.0,
    ) -> None:
        """``batch_observer(model)`` returns a callback told the size of every model call;
        ``on_load(model, config)`` is told of every version loaded. A request waits at most
        ``request_timeout`` seconds for its result. A model call that takes at most
        ``inline_call_seconds`` (measured when the version loads) runs on the event loop."""
        self.repository = repository
        self._threads = threads
        self._spinning = spinning
        self._batch_observer = batch_observer
        self._on_load = on_load
        self._request_timeout = request_timeout
        self._inline_limit = inline_call_seconds
        # One thread for every model's drift taps: off the request path, and bounded in cost.
        self._drift_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift")
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def model_states(self) -> list[tuple[str, int, int]]:
        """``(model, serving version, queued requests)`` for every loaded model."""
        return [
            (name, entry.serving.version, entry.serving.batcher.queue_depth)
            for name, entry in sorted(self._entries.items())
        ]

    def drift_monitors(self) -> list[tuple[str, int, DriftMonitor]]:
        """``(model, serving version, monitor)`` for every loaded model with drift monitoring."""
        return [
            (name, entry.serving.version, entry.serving.drift)
            for name, entry in sorted(self._entries.items())
            if entry.serving.drift is not None
        ]

    def is_loaded(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model (serving version by default); raises if not loaded."""
        entry = self._entries.get(name)
        if entry is None:
            self.repository.model_dir(name)  # raises ModelNotFound for unknown names
            raise ModelNotReady(f"model '{name}' is not loaded")
        if version is None or version == entry.serving.version:
            return entry.serving
        if version in entry.extra:
            return entry.extra[version]
        raise ModelNotReady(f"version {version} of model '{name}' is not loaded")

    async def get_version(self, name: str, version: int | None) -> LoadedModel:
        """Like ``get``, but loads an existing non-serving version on demand."""
        try:
            return self.get(name, version)
        except ModelNotReady:
            if version is None or name not in self._entries:
                raise
        async with self._lock(name):
            entry = self._entries.get(name)
            if entry is None:
                raise ModelNotReady(f"model '{name}' is not loaded")
            if version not in entry.extra:
                versions = await asyncio.to_thread(self.repository.versions, name, entry.config)
                if version not in versions:
                    raise ModelNotFound(f"model '{name}' has no version {version}")
                entry.extra[version] = await self._load_version(name, entry.config, version)
                while len(entry.extra) > _MAX_EXTRA_VERSIONS:
                    oldest = next(iter(entry.extra))
                    await entry.extra.pop(oldest).close()
                settle()
            return entry.extra[version]

    async def load(self, name: str) -> LoadedModel:
        """(Re)load ``name`` from the repository at its active version and swap it in; a
        missing ``active`` is resolved to the highest version and written."""
        model = await self._load(name)
        settle()
        return model

    async def load_all(self, names: list[str]) -> None:
        """``load`` each of ``names``, the heap settled once at the end, not after each."""
        for name in names:
            await self._load(name)
        settle()

    async def _load(self, name: str) -> LoadedModel:
        async with self._lock(name):
            config = await asyncio.to_thread(self.repository.config, name)
            version = await asyncio.to_thread(self.repository.resolve_active, name, config)
            new = await self._load_version(name, config, version)
            old = self._entries.get(name)
            self._entries[name] = _Entry(config, new)
            if old is not None:
                await self._close_entry(old)
            log.info("model %s version %d loaded", name, version)
            return new

    async def activate(self, name: str, version: int) -> LoadedModel:
        """Serve ``version`` of ``name``: load it fully, point ``active`` at it, then swap.

        Requests queued on the previous version finish on it. The ``active`` file is written
        only once the version has loaded, so a version that cannot load is never activated.
        """
        return await self._switch(name, version, write_pointer=True)

    async def follow(self, name: str) -> LoadedModel:
        """Serve the version that ``active`` names on disk, which another replica may have
        changed (no pointer write). Read under the model's lock, so it never undoes an
        ``activate`` of this process that ran in between."""
        return await self._switch(name, None, write_pointer=False)

    async def _switch(self, name: str, version: int | None, write_pointer: bool) -> LoadedModel:
        async with self._lock(name):
            if version is None:
                version = await asyncio.to_thread(self.repository.active_version, name)
            entry = self._entries.get(name)
            if entry is not None and entry.serving.version == version and not write_pointer:
                return entry.serving
            if entry is not None:
                config = entry.config
            else:
                config = await asyncio.to_thread(self.repository.config, name)
            if version not in await asyncio.to_thread(self.repository.versions, name, config):
                raise ModelNotFound(f"model '{name}' has no version {version}")
            new = await self._load_version(name, config, version)
            if write_pointer:
                try:
                    await asyncio.to_thread(self.repository.set_active, name, version)
                except BaseException:
                    await new.close()
                    raise
            self._entries[name] = _Entry(config, new)
            if entry is not None:
                await self._close_entry(entry)
            settle()
            log.info("model %s now serves version %d", name, version)
            return new

    async def unload(self, name: str) -> None:
        """Unload ``name``; a model that is not loaded stays so, without error (as in Triton's
        model-repository extension). ``ModelNotFound`` if the repository has no such model."""
        async with self._lock(name):
            entry = self._entries.pop(name, None)
            if entry is None:
                await asyncio.to_thread(self.repository.model_dir, name)
                return
            await self._close_entry(entry)
            settle()

    async def close(self) -> None:
        for name in list(self._entries):
            await self._close_entry(self._entries.pop(name))
        self._drift_executor.shutdown(wait=False, cancel_futures=True)

    async def _load_version(self, name: str, config: ModelConfig, version: int) -> LoadedModel:
        path = await asyncio.to_thread(self.repository.version_dir, name, version)
        backend = await asyncio.to_thread(load_backend, path, config, self._threads, self._spinning)
        drift = await asyncio.to_thread(
            make_monitor, config, path, backend.layers, self._drift_executor, self._threads
        )
        capture = None
        if config.adaptation.capture > 0:
            capture = TrafficCapture(config.inputs, config.adaptation.capture)
        cost = None
        if self._inline_limit > 0:
            cost = await asyncio.to_thread(measure, backend.predict, config, self._inline_limit)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}-{version}")
        batcher = DynamicBatcher(
            backend.predict,
            executor,
            max_batch_size=config.max_batch_size,
            max_queue=config.batching.max_queue,
            max_delay_ms=config.batching.max_delay_ms,
            enabled=config.batching.enabled,
            on_batch=None if self._batch_observer is None else self._batch_observer(name),
            on_served=_observers(
                None if drift is None else drift.observe,
                None if capture is None else capture.offer,
                None if cost is None else cost.observe,
            ),
            timeout=self._request_timeout,
            inline=cost.inline(self._inline_limit) if cost is not None else _never_inline,
        )
        if self._on_load is not None:
            self._on_load(name, config)
        return LoadedModel(name, version, config, backend, executor, batcher, drift, capture, cost)

    @staticmethod
    async def _close_entry(entry: _Entry) -> None:
        await entry.serving.close()
        for model in entry.extra.values():
            await model.close()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())
