"""The eval-mode tapped forward of a ``torch.export`` program (``TappedForward``).

A fresh copy of the program is loaded (never the serving one) and its module's FX graph is
rewritten once: the input of every normalization call with running statistics
(``aten.batch_norm`` and its native forms; ``aten.instance_norm`` with tracked statistics
in eval mode) first passes through an ``_InputMoments`` submodule, which reduces it per
sample and channel over the spatial axes (mean, then centred sum of squares; float32 for
half inputs) and returns it unchanged. The norm calls themselves, and everything else,
stay as exported: eval mode, stored statistics, dropout off. Layer names are
``layers.torch_layers``': the running-mean buffer's path less ``.running_mean``.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import fx

from service.backends.base import Arrays
from service.backends.taps import SampleMoments
from service.backends.torch.graph import (
    RecordedForward,
    Recorder,
    argument,
    f64,
    graph_module,
    insert_module,
    norm_layer,
    tracked_layers,
)
from service.backends.torch.program import load_program
from service.errors import ConfigError

aten = torch.ops.aten
_PREFIX = "bnserve_taps_"


class _InputMoments(Recorder[SampleMoments]):
    """Identity that keeps the per-sample moments of its input ``(N, C, *spatial)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
        samples, channels = int(x.shape[0]), int(x.shape[1])
        # SampleMoments copies its arrays: in-place ops later in the graph cannot reach them
        if x.dim() == 2:
            values = f64(wide)
            self.moments = SampleMoments(1, values, np.zeros_like(values))
            return x
        flat = wide.reshape(samples, channels, -1)
        # two passes, centred: 10x faster than torch.var_mean on short rows (64 positions)
        mean = flat.mean(dim=2, keepdim=True)
        m2 = (flat - mean).square_().sum(dim=2)
        self.moments = SampleMoments(int(flat.shape[2]), f64(mean.squeeze(2)), f64(m2))
        return x


class TorchTaps(RecordedForward[SampleMoments]):
    """The tapped module of one program; input order and thread-safety are
    ``RecordedForward``'s (the drift monitor calls ``sample_moments`` from its one tap
    thread anyway)."""

    def sample_moments(self, inputs: Arrays) -> dict[str, SampleMoments]:
        return self.record(inputs)


def torch_taps(path: Path, input_names: Sequence[str] | None = None) -> TorchTaps:
    """The tapped forward of the ``.pt2`` file at ``path``.

    ``input_names``: the keys of ``sample_moments``' inputs in the program's positional
    order (the config's input names); see ``TorchTaps`` for the default. Raises
    ``ConfigError`` for a file that cannot be loaded or tapped.
    """
    program = load_program(path)
    names = [layer.name for layer in tracked_layers(program, path)]
    module, own_names, given = graph_module(program, path, input_names)
    recorders = _rewrite(module, path)
    if list(recorders) != names:
        raise ConfigError(f"{path}: tapped layers {list(recorders)}, expected {names}")
    return TorchTaps(module, recorders, own_names, given)


def _rewrite(module: fx.GraphModule, path: Path) -> dict[str, _InputMoments]:
    """Route the input of each running-statistics norm call through an ``_InputMoments``."""
    graph = module.graph
    recorders: dict[str, _InputMoments] = {}
    for node in list(graph.nodes):
        name = _tapped_layer(node)
        if name is None:
            continue
        if name in recorders:
            raise ConfigError(f"{path}: layer {name!r} is called more than once")
        recorder = _InputMoments()
        target = f"{_PREFIX}{len(recorders)}"
        tapped = insert_module(module, node, target, recorder, (node.args[0],))
        node.replace_input_with(node.args[0], tapped)
        recorders[name] = recorder
    module.recompile()
    return recorders


def _tapped_layer(node: fx.Node) -> str | None:
    """The layer name of a norm call that uses stored statistics, else ``None``."""
    if node.target == aten.instance_norm.default and argument(node, "use_input_stats", True):
        return None
    return norm_layer(node)
