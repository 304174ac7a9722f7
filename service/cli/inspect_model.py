"""``bnserve inspect PATH``: the normalization layers stored in a model file, as text.

Needs no ``config.toml``: the layers are read from the file alone, as serving reads them.
"""

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.backends.base import NormLayer
from service.backends.families import family_for_file

_HEADER = (
    "name",
    "kind",
    "channels",
    "eps",
    "running_mean min/mean/max",
    "running_var min/mean/max",
)


def inspect_file(path: Path) -> tuple[str, tuple[NormLayer, ...]]:
    """The platform (``onnxruntime_onnx``, ``pytorch_export``) and the layers of a model file,
    its family told by its suffix; ``ConfigError`` naming the file if it cannot be read."""
    found = family_for_file(path)
    return found.platform, found.read_layers(path)


def format_layers(layers: Sequence[NormLayer], full: bool = False) -> str:
    """A plain-text table, one row per layer; with ``full``, every statistic value follows
    (``%.9g``, enough digits to recover a float32)."""
    if not layers:
        return "no normalization layers\n"
    rows = [_HEADER, *(_row(layer) for layer in layers)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    text = "\n".join(line.rstrip() for line in lines) + "\n"
    if full:
        text += "".join(_values(layer) for layer in layers if not layer.batch_independent)
    return text


def _row(layer: NormLayer) -> tuple[str, str, str, str, str, str]:
    if layer.running_mean is None or layer.running_var is None:
        mean = var = "(batch-independent)"
    else:
        mean, var = _summary(layer.running_mean), _summary(layer.running_var)
    return (layer.name, layer.kind, str(layer.channels), f"{layer.eps:g}", mean, var)


def _summary(values: npt.NDArray[np.float64]) -> str:
    if values.size == 0:
        return "-"
    return f"{values.min():.4g} / {values.mean():.4g} / {values.max():.4g}"


def _values(layer: NormLayer) -> str:
    text = f"\n{layer.name}\n"
    for label, values in (("running_mean", layer.running_mean), ("running_var", layer.running_var)):
        numbers = " ".join(f"{value:.9g}" for value in np.asarray(values).ravel())
        text += textwrap.fill(
            numbers, width=100, initial_indent=f"  {label}: ", subsequent_indent=" " * 16
        )
        text += "\n"
    return text
