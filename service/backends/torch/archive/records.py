"""The records of a ``.pt2`` archive that torch would unpickle or load as native code, and
the weights-only hold on ``torch.load`` while a program loads."""

import io
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.export.pt2_archive import PT2ArchiveReader
from torch.export.pt2_archive._package import _load_payload_config
from torch.export.pt2_archive.constants import (
    AOTINDUCTOR_DIR,
    CONSTANTS_CONFIG_FILENAME_FORMAT,
    CONSTANTS_DIR,
    MODELS_DIR,
    TENSOR_CONSTANT_FILENAME_PREFIX,
    WEIGHTS_CONFIG_FILENAME_FORMAT,
    WEIGHTS_DIR,
)

from service.backends.torch.archive.programs import check_program
from service.backends.torch.archive.refusals import UnsafeArchive


def check_archive(data: bytes) -> None:
    """Raise ``UnsafeArchive`` naming the record when loading ``data`` (a ``.pt2`` file's
    bytes) could unpickle beyond the weights-only allow-list, load native code or evaluate a
    string of a program as code (``check_program``); other exceptions when ``data`` is not a
    ``.pt2`` archive at all. Unpickles and evaluates nothing."""
    _check_layout(data)
    archive = PT2ArchiveReader(io.BytesIO(data))
    names = archive.get_file_names()
    if any(name.startswith(AOTINDUCTOR_DIR) for name in names):
        raise UnsafeArchive(
            f"{AOTINDUCTOR_DIR} holds AOTInductor code, a shared library torch would load"
        )
    for record in _pickled_records(archive, names):
        _check_pickle(record, archive.read_bytes(record))
    for record in names:
        if record.startswith(MODELS_DIR):  # every one is deserialized, as torch selects them
            check_program(record, archive.read_bytes(record))


def _check_layout(data: bytes) -> None:
    """Every entry in one folder: ``torch.export.load`` reads a zip whose root holds
    ``version`` in its legacy format, with Python's ``zipfile``, past the checks below."""
    with zipfile.ZipFile(io.BytesIO(data)) as raw:
        entries = raw.namelist()
    root = entries[0].split("/", 1)[0] if entries else ""
    if stray := next((entry for entry in entries if not entry.startswith(f"{root}/")), None):
        raise UnsafeArchive(
            f"{stray} lies outside the archive's folder: torch.export.load would read the file "
            "in its legacy format"
        )


def _pickled_records(archive: PT2ArchiveReader, names: list[str]) -> Iterator[str]:
    """The records ``torch.export.load`` may unpickle; ``UnsafeArchive`` for those it would
    read with an unpickler that has no allow-list."""
    yield from (name for name in names if name.endswith(".pt"))  # sample inputs, legacy files
    for folder, config_format in (
        (WEIGHTS_DIR, WEIGHTS_CONFIG_FILENAME_FORMAT),
        (CONSTANTS_DIR, CONSTANTS_CONFIG_FILENAME_FORMAT),
    ):
        suffix = config_format.split("{}")[1]
        configs = [name for name in names if name.startswith(folder) and name.endswith(suffix)]
        for config in configs:
            for entry in _load_payload_config(archive, config).config.values():
                record = os.path.join(folder, entry.path_name)  # as torch joins them
                if folder == CONSTANTS_DIR and not entry.path_name.startswith(
                    TENSOR_CONSTANT_FILENAME_PREFIX
                ):
                    raise UnsafeArchive(
                        f"{record} is a custom or opaque object, which torch unpickles "
                        "without an allow-list"
                    )
                if entry.use_pickle:
                    yield record


def _check_pickle(record: str, data: bytes) -> None:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception as exc:  # not a torch.save zip, TorchScript, an unknown opcode, truncated
        raise UnsafeArchive(
            f"{record} needs a full unpickle: it is not a weights-only torch.save file ({exc})"
        ) from exc
    if unsafe:
        raise UnsafeArchive(
            f"{record} needs a full unpickle: it names {', '.join(sorted(unsafe))}, outside "
            "torch's weights-only allow-list"
        )


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` runs with ``weights_only=True`` until exit, whatever its caller
    asks for.

    ``torch.load`` is a process-wide attribute: hold ``SERIALIZATION_LOCK`` so that two loads
    never patch it at once. Another thread's ``torch.load`` in the meantime is only made
    stricter; bnserve itself has none.
    """
    original = torch.load
    torch.load = _weights_only(original)
    try:
        yield
    finally:
        torch.load = original


def _weights_only(load: Callable[..., Any]) -> Callable[..., Any]:
    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        return load(*args, **{**kwargs, "weights_only": True})

    return weights_only_load
