"""The normalization layers of a ``torch.export`` program, read from its graph.

Shared by serving (``TorchBackend.layers``), ``bnserve inspect`` and the rewrites
(calibration, taps, the statistics writer), which name layers the same way.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx
from torch.export import ExportedProgram

from service.backends.base import LayerKind, NormLayer
from service.backends.torch.program import load_program
from service.errors import ConfigError

aten = torch.ops.aten
_BATCH_NORMS = {
    aten.batch_norm.default,
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten._native_batch_norm_legit.default,  # training only: refused with a clear message
}
_PER_SAMPLE: dict[Any, LayerKind] = {
    aten.layer_norm.default: "LayerNorm",
    aten.native_layer_norm.default: "LayerNorm",
    aten.group_norm.default: "GroupNorm",
    aten.native_group_norm.default: "GroupNorm",
}


def read_layers(path: Path) -> tuple[NormLayer, ...]:
    """The normalization layers of the ``.pt2`` file at ``path``; ``ConfigError`` naming it
    when it cannot be loaded or a layer is invalid."""
    program = load_program(path)
    try:
        return torch_layers(program)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def torch_layers(program: ExportedProgram) -> tuple[NormLayer, ...]:
    """The normalization layers of the program's graph, in node order.

    A layer that normalizes with stored statistics (BatchNorm; InstanceNorm with tracked
    statistics in eval mode) is named after its running-mean buffer less ``.running_mean``,
    which is its module path; a batch-independent layer after its weight parameter less
    ``.weight``, else its module path from the node's metadata, else the node name.
    Raises ``ValueError`` for a BatchNorm that uses batch statistics (training mode, or
    ``track_running_stats=False``): serving it would make outputs depend on the batch.
    """
    layers: list[NormLayer] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _BATCH_NORMS:
            layers.append(_batch_norm(node, program))
        elif node.target == aten.instance_norm.default:
            layers.append(_instance_norm(node, program))
        elif node.target in _PER_SAMPLE:
            layers.append(_per_sample_norm(node, program))
    return tuple(layers)


def _batch_norm(node: fx.Node, program: ExportedProgram) -> NormLayer:
    if _arg(node, "training", False) or _arg(node, "running_mean") is None:
        raise ValueError(
            f"node {node.name!r} normalizes with batch statistics (exported in training "
            "mode, or a BatchNorm with track_running_stats=False); export in eval mode"
        )
    return _with_statistics(node, program, "BatchNorm")


def _instance_norm(node: fx.Node, program: ExportedProgram) -> NormLayer:
    if _arg(node, "running_mean") is not None and not _arg(node, "use_input_stats", True):
        return _with_statistics(node, program, "InstanceNorm")
    weight = _arg(node, "weight")
    channels = _input_channels(node) or (_numel(weight) if isinstance(weight, fx.Node) else 0)
    return NormLayer(_name(node, program), "InstanceNorm", channels, _eps(node), None, None)


def _per_sample_norm(node: fx.Node, program: ExportedProgram) -> NormLayer:
    kind = _PER_SAMPLE[node.target]
    if kind == "LayerNorm":
        shape = _arg(node, "normalized_shape")
        channels = math.prod(int(size) for size in shape) if isinstance(shape, list) else 0
    else:
        count = _arg(node, "C")  # native_group_norm passes the channel count
        channels = int(count) if isinstance(count, int) else _input_channels(node)
    return NormLayer(_name(node, program), kind, channels, _eps(node), None, None)


def _with_statistics(node: fx.Node, program: ExportedProgram, kind: LayerKind) -> NormLayer:
    mean_name, mean = _stored(node, program, "running_mean")
    _, var = _stored(node, program, "running_var")
    suffix = ".running_mean"
    name = mean_name.removesuffix(suffix) if mean_name.endswith(suffix) else mean_name
    return NormLayer(name, kind, mean.size, _eps(node), mean, var)


def _stored(
    node: fx.Node, program: ExportedProgram, argument: str
) -> tuple[str, npt.NDArray[np.float64]]:
    """The fully qualified name and a float64 copy of a tensor the program stores."""
    source = _arg(node, argument)
    signature = program.graph_signature
    if isinstance(source, fx.Node) and source.op == "placeholder":
        for table in (
            signature.inputs_to_buffers,
            signature.inputs_to_parameters,
            signature.inputs_to_lifted_tensor_constants,
        ):
            if source.name in table:
                name = table[source.name]
                tensor = program.state_dict.get(name)
                if tensor is None:
                    tensor = program.constants[name]
                if isinstance(tensor, torch.Tensor):
                    values = tensor.detach().to(torch.float64).cpu().numpy()
                    return name, np.array(values, dtype=np.float64).ravel()
    raise ValueError(f"node {node.name!r}: {argument} is not a tensor stored in the program")


def _name(node: fx.Node, program: ExportedProgram) -> str:
    weight = _arg(node, "weight")
    if isinstance(weight, fx.Node):
        parameter = program.graph_signature.inputs_to_parameters.get(weight.name, "")
        if parameter.endswith(".weight"):
            return str(parameter.removesuffix(".weight"))
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if isinstance(path, str) and path:
            return path
    return node.name


def _arg(node: fx.Node, name: str, default: Any = None) -> Any:
    """An argument of an aten call by its schema name, positional or keyword."""
    schema = getattr(node.target, "_schema", None)
    arguments = schema.arguments if schema is not None else []
    for index, argument in enumerate(arguments):
        if argument.name == name:
            if index < len(node.args):
                return node.args[index]
            if name in node.kwargs:
                return node.kwargs[name]
            return argument.default_value if argument.has_default_value() else default
    return default


def _eps(node: fx.Node) -> float:
    return float(_arg(node, "eps", 1e-5))


def _input_channels(node: fx.Node) -> int:
    value = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and isinstance(value.shape[1], int):
        return int(value.shape[1])
    return 0


def _numel(node: fx.Node) -> int:
    value = node.meta.get("val")
    return int(value.numel()) if isinstance(value, torch.Tensor) else 0
