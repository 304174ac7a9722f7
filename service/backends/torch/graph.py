"""FX-graph surgery shared by the torch rewrites (``calibration``, ``taps``).

Both take the module of a freshly loaded ``torch.export`` program (never the serving one),
insert a ``Recorder`` submodule at some of its normalization calls and run the module on
inputs passed positionally, collecting what each recorder saw. Layer names are
``layers.torch_layers``': the running-mean buffer's path less ``.running_mean``.
"""

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import fx, nn
from torch.export import ExportedProgram

from service.backends.base import NormLayer
from service.backends.torch.layers import torch_layers
from service.errors import ConfigError, InvalidInput

aten = torch.ops.aten
NORM_CALLS = frozenset(
    {
        aten.batch_norm.default,
        aten.native_batch_norm.default,
        aten._native_batch_norm_legit_no_training.default,
        aten.instance_norm.default,
    }
)
"""The aten calls a normalization layer with running statistics is exported as."""

T = TypeVar("T")
_REQUIRED: Any = object()


class Recorder(nn.Module, Generic[T]):
    """A submodule that keeps, in ``moments``, what it saw of the forward in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.moments: T | None = None

    def take(self) -> T:
        moments, self.moments = self.moments, None
        if moments is None:
            raise RuntimeError("the normalization layer was not reached in the forward")
        return moments


class RecordedForward(Generic[T]):
    """A rewritten module and its recorders (layer name -> recorder, in graph order).

    Inputs are passed to the program positionally: by ``input_names`` when given (the
    config's order, as ``TorchBackend.predict`` does), else by the program's own input names
    when the keys are exactly those, else in the mapping's order. Thread-safety: the
    recorders keep the moments of the forward in flight, so calls are serialized by a lock.
    """

    def __init__(
        self,
        module: nn.Module,
        recorders: Mapping[str, Recorder[T]],
        own_names: list[str],
        input_names: list[str] | None,
    ) -> None:
        self.layers = tuple(recorders)
        self._module = module
        self._recorders = dict(recorders)
        self._own_names = own_names
        self._input_names = input_names
        self._lock = threading.Lock()

    def record(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, T]:
        """One forward on ``inputs``; every recorder's moments, by layer name."""
        tensors = [torch.from_numpy(writable(array)) for array in self._ordered(inputs)]
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


def writable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array``, or a C-contiguous writable copy of it."""
    # torch.from_numpy warns on read-only arrays and the graph's views want contiguous memory
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


def f64(tensor: torch.Tensor) -> npt.NDArray[np.float64]:
    """A tensor's values as a float64 numpy array on the host."""
    return np.asarray(tensor.detach().to("cpu", torch.float64).numpy(), dtype=np.float64)


def tracked_layers(program: ExportedProgram, path: Path) -> list[NormLayer]:
    """The program's layers with running statistics, in graph order; ``ConfigError`` when
    they cannot be read."""
    try:
        layers = torch_layers(program)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return [layer for layer in layers if not layer.batch_independent]


def layer_channels(program: ExportedProgram, path: Path) -> dict[str, int]:
    """Layers with running statistics -> channels, in graph order."""
    return {layer.name: layer.channels for layer in tracked_layers(program, path)}


def graph_module(
    program: ExportedProgram, path: Path, input_names: Sequence[str] | None
) -> tuple[fx.GraphModule, list[str], list[str] | None]:
    """The program's module, its own input names and ``input_names`` as a list (checked to
    be as many). Raises ``ConfigError`` for a wrong count or a module that is not FX."""
    own_names = list(program.graph_signature.user_inputs)
    names = list(input_names) if input_names is not None else None
    if names is not None and len(names) != len(own_names):
        raise ConfigError(f"{path}: the program has {len(own_names)} inputs, got names {names}")
    module = program.module()
    if not isinstance(module, fx.GraphModule):
        raise ConfigError(f"{path}: the program's module is not an FX graph")
    return module, own_names, names


def insert_module(
    module: fx.GraphModule, before: fx.Node, target: str, submodule: nn.Module, args: Any
) -> fx.Node:
    """Add ``submodule`` as ``target`` and a call of it on ``args`` just before ``before``."""
    module.add_submodule(target, submodule)
    with module.graph.inserting_before(before):
        return module.graph.call_module(target, args)


def norm_layer(node: fx.Node) -> str | None:
    """The layer name of a ``NORM_CALLS`` node that reads a running-mean buffer, else
    ``None``."""
    if node.op != "call_function" or node.target not in NORM_CALLS:
        return None
    source = argument(node, "running_mean")
    if not isinstance(source, fx.Node) or source.op != "get_attr":
        return None
    return str(source.target).removesuffix(".running_mean")


def argument(node: fx.Node, name: str, default: Any = _REQUIRED) -> Any:
    """An argument of an aten call by its schema name, positional or keyword; ``default``
    when the schema has no such argument (``KeyError`` without one)."""
    for index, schema_argument in enumerate(node.target._schema.arguments):  # type: ignore[union-attr]
        if schema_argument.name == name:
            if index < len(node.args):
                return node.args[index]
            return node.kwargs.get(name, schema_argument.default_value)
    if default is _REQUIRED:
        raise KeyError(name)
    return default
