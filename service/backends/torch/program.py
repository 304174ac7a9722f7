"""Reading a ``.pt2`` file into a ``torch.export`` program: how serving, calibration, taps
and the statistics writer all load one, under one lock."""

import io
import threading
from pathlib import Path

import torch
from torch.export import ExportedProgram

from service.backends.torch.archive import UnsafeArchive, check_archive, weights_only_loads
from service.errors import ConfigError

SERIALIZATION_LOCK = threading.Lock()
"""torch.export's (de)serializer keeps process-wide state: one load or save at a time."""


def load_program(path: Path) -> ExportedProgram:
    """Load a ``.pt2`` file; ``ConfigError`` naming it on failure. Thread-safe.

    Nothing in the file is unpickled beyond torch's weights-only allow-list; a file that
    would need more is refused unread (see ``archive``). The file is read once, so the
    bytes that pass the check are the bytes torch loads, whatever happens to the file.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        check_archive(data)
        with SERIALIZATION_LOCK, weights_only_loads():
            return torch.export.load(io.BytesIO(data))
    except UnsafeArchive as exc:
        raise ConfigError(f"{path}: refused: {exc}") from exc
    except Exception as exc:  # torch raises many types for a file that is not a program
        raise ConfigError(f"{path}: not a torch.export program: {exc}") from exc
