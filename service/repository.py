"""The model repository on disk: model folders, immutable version folders, the ``active`` pointer.

Layout (Triton-like)::

    <root>/<model>/config.toml
    <root>/<model>/<version>/model.onnx | model.pt2
    <root>/<model>/active            # the serving version; missing at load -> the highest,
                                     # written then (``resolve_active``)

Atomicity: a version is written into a hidden temporary folder, fsynced, and renamed to its
number; ``active`` is replaced with ``os.replace``. A crash leaves either the old state or the
new one. Names and versions are validated before they touch the filesystem. A full
filesystem (or quota) fails a write with ``InsufficientStorage`` and leaves nothing behind.
"""

import errno
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson

from service.config import ModelConfig, load_model_config
from service.errors import (
    ConfigError,
    Conflict,
    InsufficientStorage,
    InvalidInput,
    ModelNotFound,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_TMP_PREFIX = ".tmp-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def parse_version(text: str) -> int:
    """A version as it appears in a URL or folder name: a positive decimal integer."""
    if not _VERSION.fullmatch(text):
        raise InvalidInput(f"invalid version {text!r}: expected a positive integer")
    return int(text)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            fd = os.open(Path(dirpath, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    """Report a full filesystem or an exhausted quota as ``InsufficientStorage`` saying
    ``what`` could not be written; any other ``OSError`` stays what it is (a server fault)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        raise InsufficientStorage(f"{what}: {os.strerror(exc.errno)}") from exc


def _write_pointer(folder: Path, version: int, exclusive: bool) -> None:
    """Write ``folder / "active"`` durably: a fsynced temporary file put in place by
    ``os.replace``, or, when ``exclusive``, by ``os.link``, which leaves an existing pointer
    as it is."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{version}\n")
            handle.flush()
            os.fsync(handle.fileno())
        if not exclusive:
            os.replace(tmp, folder / "active")
        else:
            with suppress(FileExistsError):  # another process resolved it first
                os.link(tmp, folder / "active")
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(folder)


_LOCK = ".active.lock"
_LOCK_STALE_SECONDS = 10.0  # a holder writes one small file; older means it died holding it
_LOCK_WAIT_SECONDS = _LOCK_STALE_SECONDS + 2.0
"""Longer than a lock can be held alive: a waiter either gets it or finds it stale and breaks
it (a lock left by a process SIGKILLed while holding it, found by
``tests/reliability/test_reliability_faults.py``, once answered 409 for 10 s)."""


@contextmanager
def _pointer_lock(folder: Path) -> Iterator[None]:
    """Hold the model's pointer lock (a folder: creating one is atomic, and fails if it
    exists). A lock left by a process that died holding it is broken once stale."""
    lock = folder / _LOCK
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            lock.mkdir()
            break
        except FileExistsError:
            with suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > _LOCK_STALE_SECONDS:
                    lock.rmdir()
                    continue
            if time.monotonic() > deadline:
                raise Conflict(f"{lock}: held for over {_LOCK_WAIT_SECONDS} s") from None
            time.sleep(0.005)
    try:
        yield
    finally:
        lock.rmdir()


class ModelRepository:
    """Read and write access to one model repository folder. Stateless: every call reads disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model_dir(self, name: str) -> Path:
        if not _NAME.fullmatch(name) or ".." in name:
            raise ModelNotFound(f"invalid model name {name!r}")
        path = self.root / name
        if not (path / "config.toml").is_file():
            raise ModelNotFound(f"model '{name}' not found in the repository")
        return path

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: model repository folder does not exist")
        return sorted(
            p.name
            for p in self.root.iterdir()
            if _NAME.fullmatch(p.name) and (p / "config.toml").is_file()
        )

    def config(self, name: str) -> ModelConfig:
        return load_model_config(self.model_dir(name) / "config.toml")

    def versions(self, name: str, config: ModelConfig | None = None) -> list[int]:
        """Complete versions: numbered folders holding the model file."""
        folder = self.model_dir(name)
        model_file = (config or self.config(name)).model_file
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if _VERSION.fullmatch(p.name) and (p / model_file).is_file()
        )

    def version_dir(self, name: str, version: int) -> Path:
        path = self.model_dir(name) / str(version)
        if not path.is_dir():
            raise ModelNotFound(f"model '{name}' has no version {version}")
        return path

    def active_version(self, name: str, config: ModelConfig | None = None) -> int:
        """The version that ``active`` names; ``ConfigError`` when the pointer is missing,
        unreadable or names no complete version."""
        versions = self.versions(name, config)
        pointer = self.model_dir(name) / "active"
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{pointer}: missing: no version is marked active") from None
        try:
            version = parse_version(text)
        except InvalidInput as exc:
            raise ConfigError(f"{pointer}: {exc}") from exc
        if version not in versions:
            raise ConfigError(f"{pointer}: version {version} does not exist")
        return version

    def resolve_active(self, name: str, config: ModelConfig | None = None) -> int:
        """The active version, after writing ``active`` if it is missing.

        A model without ``active`` serves its highest version, and that choice is written here,
        once, when the model is loaded. From then on only a write of ``active`` changes what is
        served: a version that appears later (``activate=false``, a dry run's sibling, another
        replica's write) is never served for being the highest. Replicas resolving together
        agree: the pointer is created by a hard link, which fails when another process created
        it first, and every process then reads what is on disk.
        """
        folder = self.model_dir(name)
        if not (folder / "active").exists():
            versions = self.versions(name, config)
            if not versions:
                raise ConfigError(f"{folder}: no version folder with a model file")
            with _storage_errors(f"cannot mark version {versions[-1]} of model '{name}' active"):
                _write_pointer(folder, versions[-1], exclusive=True)
        return self.active_version(name, config)

    def provenance(self, name: str, version: int) -> dict[str, Any] | None:
        """Summary of a recalibrated version's ``recalibration.json``; ``None`` for originals."""
        path = self.version_dir(name, version) / "recalibration.json"
        if not path.is_file():
            return None
        try:
            report = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable provenance: {exc}") from exc
        keys = ("source_version", "created", "parameters", "samples", "batches", "tail")
        summary = {key: report.get(key) for key in keys}
        if "source" in report:  # written from captured traffic by an adaptation
            summary["source"] = report["source"]
        return summary

    def set_active(self, name: str, version: int) -> None:
        """Point ``active`` at ``version`` atomically (write, fsync, rename, fsync folder)."""
        self._switch_active(name, version, expected=None)

    def compare_and_set_active(self, name: str, expected: int, version: int) -> bool:
        """Point ``active`` at ``version`` only if it still names ``expected``; whether it did.

        Replicas sharing the repository serialize on a lock folder (``mkdir`` is atomic on
        local filesystems and NFS alike), so two that decide together from the same serving
        version switch once: the second finds ``active`` moved and changes nothing.
        """
        return self._switch_active(name, version, expected)

    def _switch_active(self, name: str, version: int, expected: int | None) -> bool:
        folder = self.model_dir(name)
        if version not in self.versions(name):
            raise ModelNotFound(f"model '{name}' has no version {version}")
        with (
            _storage_errors(f"cannot make version {version} of model '{name}' active"),
            _pointer_lock(folder),
        ):
            if expected is not None and self.active_version(name) != expected:
                return False
            _write_pointer(folder, version, exclusive=False)
            return True

    def sweep_temporaries(self, older_than: float = 3600.0) -> list[Path]:
        """Remove hidden temporary folders and files a crashed writer left behind.

        Only those untouched for ``older_than`` seconds: on a shared repository another
        replica may be writing one right now.
        """
        removed: list[Path] = []
        now = time.time()
        for name in self.model_names():
            for path in (self.root / name).glob(f"{_TMP_PREFIX}*"):
                try:
                    if now - path.lstat().st_mtime < older_than:
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError:
                    continue  # another process removed it first
                removed.append(path)
        return removed

    def write_version(self, name: str, write: Callable[[Path], None]) -> int:
        """Create the next version: ``write(tmp_dir)`` fills a hidden folder, renamed into place.

        The number is allocated by the rename itself (``os.rename`` of a folder onto an existing
        non-empty one fails), so concurrent writers on a shared repository never collide.
        If ``write`` raises, nothing is left behind; out of space, it raises
        ``InsufficientStorage``.
        """
        folder = self.model_dir(name)
        with _storage_errors(f"cannot write a new version of model '{name}'"):
            return self._write_version(folder, write)

    @staticmethod
    def _write_version(folder: Path, write: Callable[[Path], None]) -> int:
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=folder))
        try:
            write(tmp)
            _fsync_tree(tmp)
            while True:
                existing = [int(p.name) for p in folder.iterdir() if _VERSION.fullmatch(p.name)]
                version = max(existing, default=0) + 1
                try:
                    tmp.rename(folder / str(version))
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        continue  # another writer took this number first
                    raise
                _fsync_dir(folder)
                return version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
