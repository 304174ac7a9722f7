"""The batch-statistics forward of ``torch.export`` programs (``BatchStatsForward``).

The forward loads a fresh copy of the program (never the serving one), takes its module and
replaces each selected normalization call of the FX graph by a ``_BatchStatistics`` submodule
that normalizes with the current batch's statistics, as the layer does in train mode, and
keeps the moments of its input; everything else (unselected norms, dropout) stays as
exported, in eval mode. Layer names are ``layers.torch_layers``' (running-mean buffer less
``.running_mean``, the module path).

InstanceNorm with tracked statistics (``track_running_stats=True``) follows torch's own
train mode: each instance (sample, channel) is normalized with its own statistics, and
torch's running update uses, per channel, the mean over the batch of the instance means and
of the instance *unbiased* variances (``m = positions per instance``, Bessel ``m / (m - 1)``).
The moments returned for such a layer encode exactly that::

    n = N * m,   mean = avg_i mean_i,   var_biased = avg_i s2_i * (n - 1) / n

so that ``M2 / (n - 1) = avg_i s2_i`` and the ``cumulative`` and ``ema`` estimators of
``service.stats.recalibrate`` reproduce torch's update (``momentum = 1/t`` resp. ``m``). Its
``M2`` is the pooled *within-instance* spread, not the spread over the whole batch, so
``population`` mode and the drift report see the within-instance variance for such layers.
"""

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx

from service.backends.calibration import recalibrated_layers
from service.backends.torch.graph import (
    RecordedForward,
    Recorder,
    argument,
    f64,
    graph_module,
    insert_module,
    layer_channels,
    norm_layer,
)
from service.backends.torch.program import load_program
from service.errors import ConfigError
from service.stats.moments import Moments

aten = torch.ops.aten
_RETURNS_TUPLE = {aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_PREFIX = "bnserve_batch_statistics_"


class _BatchStatistics(Recorder[Moments]):
    """Stands in for one normalization call: train-mode normalization, moments kept."""

    def __init__(self, eps: float, per_instance: bool, returns_tuple: bool) -> None:
        super().__init__()
        self.eps = eps
        self.per_instance = per_instance
        self.returns_tuple = returns_tuple

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> Any:
        if self.per_instance:
            y = torch.instance_norm(x, weight, bias, None, None, True, 0.0, self.eps, False)
            self.moments = _instance_moments(x)
        else:
            wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
            var, mean = torch.var_mean(wide, dim=[0, *range(2, x.dim())], correction=0)
            # eval-mode batch_norm with the batch statistics: train mode's transform, fused
            y = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, self.eps, False)
            self.moments = Moments.from_summary(x.numel() / x.shape[1], f64(mean), f64(var))
        return (y, y.new_empty(0), y.new_empty(0)) if self.returns_tuple else y


def _instance_moments(x: torch.Tensor) -> Moments:
    """Moments whose Bessel-corrected variance is torch's InstanceNorm running update (see
    the module docstring)."""
    batch, channels = int(x.shape[0]), int(x.shape[1])
    positions = x.numel() // max(batch * channels, 1)
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    var, mean = torch.var_mean(wide.reshape(batch, channels, -1), dim=2, correction=0)
    n = float(batch * positions)
    if positions <= 1 or n <= 1:  # no unbiased variance: non-finite, refused by the caller
        return Moments.from_summary(n, f64(mean).mean(axis=0), np.full(channels, np.nan))
    unbiased = f64(var).mean(axis=0) * positions / (positions - 1)
    return Moments.from_summary(n, f64(mean).mean(axis=0), unbiased * (n - 1) / n)


class TorchBatchStats(RecordedForward[Moments]):
    """The rewritten module of one program (``BatchStatsForward``); input order and
    thread-safety are ``RecordedForward``'s."""

    def batch_moments(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, Moments]:
        return self.record(inputs)


def torch_batch_stats(
    path: Path, layers: Collection[str] | None = None, input_names: Sequence[str] | None = None
) -> TorchBatchStats:
    """The recalibration forward of ``path`` for ``layers`` (every layer with running
    statistics when ``None``: BatchNorm, InstanceNorm with tracked statistics).

    ``input_names``: the keys of ``batch_moments``' inputs in the program's positional
    order (the config's input names); see ``TorchBatchStats`` for the default. Raises
    ``InvalidInput`` for an unknown layer, ``ConfigError`` for a file that cannot be used.
    """
    program = load_program(path)
    selected = recalibrated_layers(list(layer_channels(program, path)), layers)
    module, own_names, names = graph_module(program, path, input_names)
    recorders = _rewrite(module, set(selected))
    if set(recorders) != set(selected):
        missing = sorted(set(selected) - set(recorders))
        raise ConfigError(f"{path}: no normalization call found for layers {missing}")
    chosen = {name: recorders[name] for name in selected}
    return TorchBatchStats(module, chosen, own_names, names)


def _rewrite(module: fx.GraphModule, selected: set[str]) -> dict[str, _BatchStatistics]:
    """Replace the selected normalization calls by ``_BatchStatistics`` submodules."""
    graph = module.graph
    recorders: dict[str, _BatchStatistics] = {}
    for node in list(graph.nodes):
        name = norm_layer(node)
        if name is None or name not in selected:
            continue
        recorder = _BatchStatistics(
            float(argument(node, "eps")),
            per_instance=node.target == aten.instance_norm.default,
            returns_tuple=node.target in _RETURNS_TUPLE,
        )
        args = (node.args[0], argument(node, "weight"), argument(node, "bias"))
        replacement = insert_module(module, node, f"{_PREFIX}{len(recorders)}", recorder, args)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        recorders[name] = recorder
    module.recompile()
    return recorders
