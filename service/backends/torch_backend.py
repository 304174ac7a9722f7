"""``torch.export`` programs served in eval mode, and their normalization layers.

Threads: torch's intra-op pool is one per process, so a backend never calls
``torch.set_num_threads`` (with several models loaded, the last load would win for all of
them). ``threads`` is accepted for symmetry with ONNX and kept as ``self.threads``; the
service sets the process-wide count once at start-up (``torch.set_num_threads``).
"""

import io
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import OutputKind

from service.backends.base import Arrays, LayerKind, NormLayer
from service.backends.loader import FileTensor, check_tensor
from service.backends.torch_archive import UnsafeArchive, check_archive, weights_only_loads
from service.config import ModelConfig
from service.datatypes import to_datatype
from service.errors import ConfigError

PLATFORM = "pytorch_export"

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


class TorchBackend:
    """A ``model.pt2`` (an ExportedProgram with a dynamic batch axis), run under
    ``torch.inference_mode``. ``predict`` is thread-safe: the eval graph mutates nothing.
    ``program`` is kept for graph rewrites; its module shares its tensors."""

    platform = PLATFORM

    def __init__(self, path: Path, config: ModelConfig, threads: int = 0) -> None:
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


SERIALIZATION_LOCK = threading.Lock()
"""torch.export's (de)serializer keeps process-wide state: one load or save at a time."""


def load_program(path: Path) -> ExportedProgram:
    """Load a ``.pt2`` file; ``ConfigError`` naming it on failure. Thread-safe.

    Nothing in the file is unpickled beyond torch's weights-only allow-list; a file that
    would need more is refused unread (see ``torch_archive``). The file is read once, so the
    bytes that pass the check are the bytes torch loads, whatever happens to the file.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        check_archive(data)
        with SERIALIZATION_LOCK, weights_only_loads():
            return torch.export.load(io.BytesIO(data))
    except UnsafeArchive as exc:
        raise ConfigError(f"{path}: refused: {exc}") from exc
    except Exception as exc:  # torch raises many types for a file that is not a program
        raise ConfigError(f"{path}: not a torch.export program: {exc}") from exc


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


def _check_signature(program: ExportedProgram, config: ModelConfig) -> None:
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
