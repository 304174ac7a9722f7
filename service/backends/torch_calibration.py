"""Recalibration for ``torch.export`` programs: the batch-statistics forward and the writer.

The forward loads a fresh copy of the program (never the serving one), takes its module and
replaces each selected normalization call of the FX graph by a ``_BatchStatistics`` submodule
that normalizes with the current batch's statistics, as the layer does in train mode, and
keeps the moments of its input; everything else (unselected norms, dropout) stays as
exported, in eval mode. Layer names are ``torch_layers``' (running-mean buffer less
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

import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx, nn
from torch.export import ExportedProgram

from service.backends.calibration import Statistics, checked_statistics, select_layers
from service.backends.torch_backend import SERIALIZATION_LOCK, load_program, torch_layers
from service.errors import ConfigError, InvalidInput
from service.stats.moments import Moments

aten = torch.ops.aten
_RETURNS_TENSOR = {aten.batch_norm.default, aten.instance_norm.default}
_RETURNS_TUPLE = {aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_PREFIX = "bnserve_batch_statistics_"


class _BatchStatistics(nn.Module):
    """Stands in for one normalization call: train-mode normalization, moments kept."""

    def __init__(self, eps: float, per_instance: bool, returns_tuple: bool) -> None:
        super().__init__()
        self.eps = eps
        self.per_instance = per_instance
        self.returns_tuple = returns_tuple
        self.moments: Moments | None = None

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
            self.moments = Moments.from_summary(x.numel() / x.shape[1], _f64(mean), _f64(var))
        return (y, y.new_empty(0), y.new_empty(0)) if self.returns_tuple else y

    def take(self) -> Moments:
        moments, self.moments = self.moments, None
        if moments is None:
            raise RuntimeError("the normalization layer was not reached in the forward")
        return moments


def _f64(tensor: torch.Tensor) -> npt.NDArray[np.float64]:
    return np.asarray(tensor.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


def _instance_moments(x: torch.Tensor) -> Moments:
    """Moments whose Bessel-corrected variance is torch's InstanceNorm running update (see
    the module docstring)."""
    batch, channels = int(x.shape[0]), int(x.shape[1])
    positions = x.numel() // max(batch * channels, 1)
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    var, mean = torch.var_mean(wide.reshape(batch, channels, -1), dim=2, correction=0)
    n = float(batch * positions)
    if positions <= 1 or n <= 1:  # no unbiased variance: non-finite, refused by the caller
        return Moments.from_summary(n, _f64(mean).mean(axis=0), np.full(channels, np.nan))
    unbiased = _f64(var).mean(axis=0) * positions / (positions - 1)
    return Moments.from_summary(n, _f64(mean).mean(axis=0), unbiased * (n - 1) / n)


class TorchBatchStats:
    """The rewritten module of one program (``BatchStatsForward``).

    Inputs are passed to the program positionally: by ``input_names`` when given, else in
    the mapping's order (as ``TorchBackend.predict`` does with the config's order) unless
    the keys are the program's own input names. Thread-safety: the submodules keep the
    moments of the forward in flight, so calls are serialized by a lock.
    """

    def __init__(
        self,
        module: nn.Module,
        recorders: dict[str, _BatchStatistics],
        own_names: list[str],
        input_names: list[str] | None,
    ) -> None:
        self.layers = tuple(recorders)
        self._module = module
        self._recorders = recorders
        self._own_names = own_names
        self._input_names = input_names
        self._lock = threading.Lock()

    def batch_moments(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, Moments]:
        tensors = [torch.from_numpy(_writable(array)) for array in self._ordered(inputs)]
        with self._lock, torch.inference_mode():
            for recorder in self._recorders.values():
                recorder.moments = None
            self._module(*tensors)
            return {name: recorder.take() for name, recorder in self._recorders.items()}

    def _ordered(
        self, inputs: Mapping[str, npt.NDArray[np.generic]]
    ) -> list[npt.NDArray[np.generic]]:
        names = self._input_names
        if names is None:
            names = self._own_names if set(inputs) == set(self._own_names) else list(inputs)
        missing = [name for name in names if name not in inputs]
        if missing or len(names) != len(self._own_names):
            raise InvalidInput(
                f"the program takes {len(self._own_names)} input(s), got {sorted(inputs)}"
            )
        return [inputs[name] for name in names]


def _writable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # torch.from_numpy warns on read-only arrays and the graph's views want contiguous memory
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


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
    selected = select_layers(list(_layer_channels(program, path)), layers)
    own_names = list(program.graph_signature.user_inputs)
    names = list(input_names) if input_names is not None else None
    if names is not None and len(names) != len(own_names):
        raise ConfigError(f"{path}: the program has {len(own_names)} inputs, got names {names}")
    module = program.module()
    if not isinstance(module, fx.GraphModule):
        raise ConfigError(f"{path}: the program's module is not an FX graph")
    recorders = _rewrite(module, set(selected))
    if set(recorders) != set(selected):
        missing = sorted(set(selected) - set(recorders))
        raise ConfigError(f"{path}: no normalization call found for layers {missing}")
    chosen = {name: recorders[name] for name in selected}
    return TorchBatchStats(module, chosen, own_names, names)


def _layer_channels(program: ExportedProgram, path: Path) -> dict[str, int]:
    """Layers with running statistics -> channels, in graph order."""
    try:
        layers = torch_layers(program)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return {layer.name: layer.channels for layer in layers if not layer.batch_independent}


def _rewrite(module: fx.GraphModule, selected: set[str]) -> dict[str, _BatchStatistics]:
    """Replace the selected normalization calls by ``_BatchStatistics`` submodules."""
    graph = module.graph
    recorders: dict[str, _BatchStatistics] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _RETURNS_TENSOR | _RETURNS_TUPLE:
            continue
        name = _layer_name(node)
        if name is None or name not in selected:
            continue
        recorder = _BatchStatistics(
            float(_argument(node, "eps")),
            per_instance=node.target == aten.instance_norm.default,
            returns_tuple=node.target in _RETURNS_TUPLE,
        )
        target = f"{_PREFIX}{len(recorders)}"
        module.add_submodule(target, recorder)
        with graph.inserting_before(node):
            args = (node.args[0], _argument(node, "weight"), _argument(node, "bias"))
            replacement = graph.call_module(target, args)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        recorders[name] = recorder
    module.recompile()
    return recorders


def _layer_name(node: fx.Node) -> str | None:
    """The running-mean buffer's path less ``.running_mean``; ``None`` without one."""
    source = _argument(node, "running_mean")
    if not isinstance(source, fx.Node) or source.op != "get_attr":
        return None
    return str(source.target).removesuffix(".running_mean")


def _argument(node: fx.Node, name: str) -> Any:
    """An argument of an aten call by its schema name, positional or keyword."""
    for index, argument in enumerate(node.target._schema.arguments):  # type: ignore[union-attr]
        if argument.name == name:
            if index < len(node.args):
                return node.args[index]
            return node.kwargs.get(name, argument.default_value)
    raise KeyError(name)


def write_torch_statistics(src: Path, dest: Path, stats: Statistics) -> None:
    """Save ``src`` as ``dest`` with the ``<name>.running_mean``/``<name>.running_var``
    buffers of the named layers replaced by ``stats`` (in the buffers' dtype), then check
    that the saved program holds them. Raises ``InvalidInput`` naming the layer for an
    unknown name or a wrong channel count. Writes only ``dest``.
    """
    program = load_program(src)
    checked = checked_statistics(_layer_channels(program, src), stats)
    expected: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (mean, var) in checked.items():
            for key, values in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
                tensor = _stored(program, key, src)
                tensor.copy_(torch.from_numpy(values).reshape(tensor.shape))
                expected[key] = tensor.clone()
    with SERIALIZATION_LOCK:
        torch.export.save(program, dest)
    saved = load_program(dest)
    for key, tensor in expected.items():
        if not torch.equal(_stored(saved, key, dest), tensor):
            raise RuntimeError(f"{dest}: {key} was not saved")


def _stored(program: ExportedProgram, key: str, path: Path) -> torch.Tensor:
    tensor = program.state_dict.get(key)
    if tensor is None:
        tensor = program.constants.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(f"{path}: the program stores no tensor {key!r}")
    return tensor
