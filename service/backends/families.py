"""The runtime families a ``config.toml`` may name in ``backend``, and the one place that maps
such a name to its package.

A package is imported on first use, and importing one imports no runtime: its ``FAMILY``'s
methods do, so that an ONNX-only server never imports torch and validating a config costs
nothing. A new runtime is a package under ``service.backends`` that exposes ``FAMILY`` (a
``base.Family``), plus one line in ``_PACKAGES``.
"""

import importlib
from pathlib import Path, PurePath

from service.backends.base import Family
from service.errors import ConfigError

_PACKAGES: dict[str, str] = {
    "onnx": "service.backends.onnx",
    "torch": "service.backends.torch",
}

FAMILY_NAMES: tuple[str, ...] = tuple(_PACKAGES)
"""What ``backend`` may say in a ``config.toml``."""


def family(name: str) -> Family:
    """The family named ``name`` (one of ``FAMILY_NAMES``; ``KeyError`` otherwise)."""
    found: Family = importlib.import_module(_PACKAGES[name]).FAMILY
    return found


def family_for_file(path: Path) -> Family:
    """The family whose model file has the suffix of ``path`` (``.onnx``, ``.pt2``), for files
    found without a config; ``ConfigError`` naming the file when none has."""
    by_suffix = {PurePath(family(name).model_file).suffix: family(name) for name in FAMILY_NAMES}
    found = by_suffix.get(path.suffix.lower())
    if found is None:
        expected = " or ".join(by_suffix)
        raise ConfigError(f"{path}: unknown model format; expected a {expected} file")
    return found
