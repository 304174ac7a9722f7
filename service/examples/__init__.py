"""The bundled example models: data, networks, and the build that writes ``models/``.

``python -m service.examples --out models`` (``bnserve build-examples``) trains every example
on CPU with fixed seeds and writes an ONNX and a torch.export form of each.
"""

from service.examples.build import EXAMPLES, build_examples, main
from service.examples.data import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    load_digits_split,
    load_wine_split,
)
from service.examples.export import load_module
from service.examples.nets import ARCHITECTURES, DigitsCNN, DigitsLN, WineMLP, batchnorm_modules
from service.examples.shift import recalibrate_bn, shift_table

__all__ = [
    "ARCHITECTURES",
    "CORRUPTIONS",
    "EXAMPLES",
    "SEVERITIES",
    "DigitsCNN",
    "DigitsLN",
    "WineMLP",
    "batchnorm_modules",
    "build_examples",
    "corrupt",
    "load_digits_split",
    "load_module",
    "load_wine_split",
    "main",
    "recalibrate_bn",
    "shift_table",
]
