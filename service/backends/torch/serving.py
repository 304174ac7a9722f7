"""``torch.export`` programs served in eval mode.

Threads: torch's intra-op pool is one per process, so the backend itself never sizes it;
``threads`` is kept as ``self.threads``, and ``TorchFamily.load`` sets the process-wide count
from it, the service's one ``model_threads`` setting, the same for every model.
"""

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import OutputKind

from service.backends.base import Arrays
from service.backends.signature import FileTensor, ModelSignature, check_tensor
from service.backends.torch.layers import torch_layers
from service.backends.torch.names import PLATFORM
from service.backends.torch.program import load_program
from service.datatypes import to_datatype
from service.errors import ConfigError


class TorchBackend:
    """A ``model.pt2`` (an ExportedProgram with a dynamic batch axis), run under
    ``torch.inference_mode``. ``predict`` is thread-safe: the eval graph mutates nothing.
    ``program`` is kept for graph rewrites; its module shares its tensors."""

    platform = PLATFORM

    def __init__(self, path: Path, config: ModelSignature, threads: int = 0) -> None:
        self.path = path
        self.threads = threads
        self.program = load_program(path)
        try:
            self.layers = torch_layers(self.program)
            _check_signature(self.program, config)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        self._module = self.program.module()
        self._input_names = [spec.name for spec in config.inputs]
        self._output_names = [spec.name for spec in config.outputs]

    def predict(self, inputs: Arrays) -> Arrays:
        """Inputs are passed positionally in the config's order (a program has no input
        names to match); outputs, a tensor or a flat tuple/list, map in order too."""
        tensors = [torch.from_numpy(_wrappable(inputs[name])) for name in self._input_names]
        with torch.inference_mode():
            result = self._module(*tensors)
        outputs = (result,) if isinstance(result, torch.Tensor) else result
        if not isinstance(outputs, tuple | list):
            raise TypeError(f"{self.path}: the program returned a {type(result).__name__}")
        return {
            name: tensor.numpy() for name, tensor in zip(self._output_names, outputs, strict=True)
        }


def _wrappable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # torch.from_numpy warns on read-only arrays (np.frombuffer over a request body) and the
    # graph's views want contiguous memory: copy in those cases only.
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


def _check_signature(program: ExportedProgram, config: ModelSignature) -> None:
    """Inputs and outputs match the config by position: count, datatype, per-sample shape,
    a dynamic batch axis whose exported maximum is at least ``max_batch_size``."""
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = [nodes[name] for name in program.graph_signature.user_inputs]
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    specs = program.graph_signature.output_specs
    outputs = [
        value
        for spec, value in zip(specs, output_node.args[0], strict=True)
        if spec.kind == OutputKind.USER_OUTPUT
    ]
    for role, config_specs, values in (
        ("input", config.inputs, inputs),
        ("output", config.outputs, outputs),
    ):
        if len(values) != len(config_specs):
            raise ValueError(
                f"the program has {len(values)} {role}s, the config lists {len(config_specs)}"
            )
        for spec, value in zip(config_specs, values, strict=True):
            found = _file_tensor(program, value, f"{role} {spec.name!r}")
            check_tensor(role, spec, found, config.max_batch_size)


def _file_tensor(program: ExportedProgram, value: object, label: str) -> FileTensor:
    meta = value.meta.get("val") if isinstance(value, fx.Node) else None
    if not isinstance(meta, torch.Tensor):
        raise ValueError(f"{label} is not a tensor in the program")
    try:
        datatype = to_datatype(torch.empty((), dtype=meta.dtype).numpy().dtype)
    except (KeyError, TypeError):  # bfloat16, complex...: no V2 equivalent
        datatype = str(meta.dtype)
    shape = tuple(size if isinstance(size, int) else None for size in meta.shape)
    limit = None
    batch = meta.shape[0] if meta.dim() else None
    if isinstance(batch, torch.SymInt):
        bounds = program.range_constraints.get(batch.node.expr)
        # The upper bound is a sympy integer, or int_oo when the export left it open.
        if bounds is not None and bool(bounds.upper < 2**63):
            limit = int(bounds.upper)
    return FileTensor(datatype, shape, limit)
