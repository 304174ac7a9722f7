"""The eval-mode tapped forward of a ``torch.export`` program (``TappedForward``).

A fresh copy of the program is loaded (never the serving one) and its module's FX graph is
rewritten once: the input of every normalization call with running statistics
(``aten.batch_norm`` and its native forms; ``aten.instance_norm`` with tracked statistics
in eval mode) first passes through an ``_InputMoments`` submodule, which reduces it per
sample and channel over the spatial axes (mean, then centred sum of squares; float32 for
half inputs) and returns it unchanged. The norm calls themselves, and everything else,
stay as exported: eval mode, stored statistics, dropout off. Layer names are
``torch_layers``': the running-mean buffer's path less ``.running_mean``.
"""

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx, nn

from service.backends.base import Arrays
from service.backends.taps import SampleMoments
from service.backends.torch_backend import load_program, torch_layers
from service.errors import ConfigError, InvalidInput

aten = torch.ops.aten
_BATCH_NORMS = {
    aten.batch_norm.default,
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
}
_PREFIX = "bnserve_taps_"


class _InputMoments(nn.Module):
    """Identity that keeps the per-sample moments of its input ``(N, C, *spatial)``."""

    def __init__(self) -> None:
        super().__init__()
        self.moments: SampleMoments | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
        samples, channels = int(x.shape[0]), int(x.shape[1])
        # SampleMoments copies its arrays: in-place ops later in the graph cannot reach them
        if x.dim() == 2:
            values = _f64(wide)
            self.moments = SampleMoments(1, values, np.zeros_like(values))
            return x
        flat = wide.reshape(samples, channels, -1)
        # two passes, centred: 10x faster than torch.var_mean on short rows (64 positions)
        mean = flat.mean(dim=2, keepdim=True)
        m2 = (flat - mean).square_().sum(dim=2)
        self.moments = SampleMoments(int(flat.shape[2]), _f64(mean.squeeze(2)), _f64(m2))
        return x

    def take(self) -> SampleMoments:
        moments, self.moments = self.moments, None
        if moments is None:
            raise RuntimeError("the normalization layer was not reached in the forward")
        return moments


def _f64(tensor: torch.Tensor) -> npt.NDArray[np.float64]:
    return np.asarray(tensor.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


class TorchTaps:
    """The tapped module of one program.

    Inputs are passed to the program positionally: by ``input_names`` when given (the
    config's order, as ``TorchBackend.predict`` does), else by the program's own input names
    when the keys are exactly those, else in the mapping's order. Thread-safety: the
    submodules keep the moments of the forward in flight, so calls are serialized by a lock
    (the drift design calls ``sample_moments`` from one thread at a time anyway).
    """

    def __init__(
        self,
        module: nn.Module,
        recorders: dict[str, _InputMoments],
        own_names: list[str],
        input_names: list[str] | None,
    ) -> None:
        self.layers = tuple(recorders)
        self._module = module
        self._recorders = recorders
        self._own_names = own_names
        self._input_names = input_names
        self._lock = threading.Lock()

    def sample_moments(self, inputs: Arrays) -> dict[str, SampleMoments]:
        tensors = [torch.from_numpy(_wrappable(array)) for array in self._ordered(inputs)]
        with self._lock, torch.inference_mode():
            for recorder in self._recorders.values():
                recorder.moments = None
            self._module(*tensors)
            return {name: recorder.take() for name, recorder in self._recorders.items()}

    def _ordered(self, inputs: Arrays) -> list[npt.NDArray[np.generic]]:
        names = self._input_names
        if names is None:
            names = self._own_names if set(inputs) == set(self._own_names) else list(inputs)
        missing = [name for name in names if name not in inputs]
        if missing or len(names) != len(self._own_names):
            raise InvalidInput(
                f"the program takes {len(self._own_names)} input(s), got {sorted(inputs)}"
            )
        return [inputs[name] for name in names]


def _wrappable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # torch.from_numpy warns on read-only arrays and the graph's views want contiguous memory
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


def torch_taps(path: Path, input_names: Sequence[str] | None = None) -> TorchTaps:
    """The tapped forward of the ``.pt2`` file at ``path``.

    ``input_names``: the keys of ``sample_moments``' inputs in the program's positional
    order (the config's input names); see ``TorchTaps`` for the default. Raises
    ``ConfigError`` for a file that cannot be loaded or tapped.
    """
    program = load_program(path)
    try:
        names = [layer.name for layer in torch_layers(program) if not layer.batch_independent]
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    own_names = list(program.graph_signature.user_inputs)
    given = list(input_names) if input_names is not None else None
    if given is not None and len(given) != len(own_names):
        raise ConfigError(f"{path}: the program has {len(own_names)} inputs, got names {given}")
    module = program.module()
    if not isinstance(module, fx.GraphModule):
        raise ConfigError(f"{path}: the program's module is not an FX graph")
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
        module.add_submodule(target, recorder)
        with graph.inserting_before(node):
            tapped = graph.call_module(target, (node.args[0],))
        node.replace_input_with(node.args[0], tapped)
        recorders[name] = recorder
    module.recompile()
    return recorders


def _tapped_layer(node: fx.Node) -> str | None:
    """The layer name of a norm call that uses stored statistics, else ``None``."""
    if node.op != "call_function":
        return None
    if node.target == aten.instance_norm.default:
        if _argument(node, "use_input_stats", True):
            return None
    elif node.target not in _BATCH_NORMS:
        return None
    source = _argument(node, "running_mean", None)
    if not isinstance(source, fx.Node) or source.op != "get_attr":
        return None
    return str(source.target).removesuffix(".running_mean")


def _argument(node: fx.Node, name: str, default: Any) -> Any:
    """An argument of an aten call by its schema name, positional or keyword."""
    for index, argument in enumerate(node.target._schema.arguments):  # type: ignore[union-attr]
        if argument.name == name:
            if index < len(node.args):
                return node.args[index]
            return node.kwargs.get(name, argument.default_value)
    return default
