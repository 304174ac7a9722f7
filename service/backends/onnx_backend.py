"""ONNX models served with onnxruntime, and their normalization layers read from the graph.

The file keeps its ``BatchNormalization`` nodes (drift taps and recalibration rewrite them);
the serving session fuses each into the preceding Conv/Gemm when it is created, so serving
pays nothing for them. The fused session bakes the statistics in: new statistics need a new
file and a new session.
"""

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from service.backends.base import Arrays, LayerKind, NormLayer
from service.backends.loader import FileTensor, check_tensor
from service.config import ModelConfig
from service.datatypes import to_datatype, to_numpy
from service.errors import ConfigError

PLATFORM = "onnxruntime_onnx"

_PER_SAMPLE: dict[str, LayerKind] = {
    "LayerNormalization": "LayerNorm",
    "GroupNormalization": "GroupNorm",
    "InstanceNormalization": "InstanceNorm",
}


def session_options(threads: int = 0, spinning: bool = False) -> ort.SessionOptions:
    """The options of every serving session: all graph optimizations (Conv+BN fusion among
    them), sequential execution, ``threads`` intra-op threads (0: onnxruntime's default).

    ``spinning``: intra-op threads busy-wait for work between runs. That lowers an idle
    server's latency (a woken thread answers sooner) but under load the spinning threads
    take CPU from the event loop (``OnnxBackend`` picks by the model's cost by default)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads > 0:
        options.intra_op_num_threads = threads
    return options


class OnnxBackend:
    """A ``model.onnx`` in an onnxruntime CPU session; ``predict`` is thread-safe (ORT's
    ``run`` is). The parsed graph is dropped after load; ``path`` is kept for rewrites."""

    platform = PLATFORM

    def __init__(
        self, path: Path, config: ModelConfig, threads: int = 0, spinning: bool | None = None
    ) -> None:
        """``spinning``: see ``session_options``; ``None`` chooses by the model's cost: on for
        a model whose one-sample call takes ``SPIN_ABOVE_SECONDS`` or more (its many ops keep
        the intra-op pool busy, and waking it per op is slow), off below (the event loop is
        then the bottleneck, and spinning threads would take its CPU)."""
        self.path = path
        model = load_model(path)
        try:
            self.layers = onnx_layers(model)
            _check_signature(model.graph, config)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        del model  # the session reads the file itself; the proto would only hold memory
        self._input_names = [spec.name for spec in config.inputs]
        self._output_names = [spec.name for spec in config.outputs]
        self._session = _session(path, threads, spinning is not False)
        if spinning is None and _call_seconds(self, config) < SPIN_ABOVE_SECONDS:
            self._session = _session(path, threads, False)

    def predict(self, inputs: Arrays) -> Arrays:
        feed = {name: inputs[name] for name in self._input_names}
        outputs = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, outputs, strict=True))


SPIN_ABOVE_SECONDS = 0.001


def _session(path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(threads, spinning),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own types for invalid graphs
        raise ConfigError(f"{path}: onnxruntime cannot load the model: {exc}") from exc


def _call_seconds(backend: "OnnxBackend", config: ModelConfig) -> float:
    """The fastest of a few one-sample calls on zeros (after one warm-up call)."""
    sample = {
        spec.name: np.zeros((1, *spec.shape), dtype=to_numpy(spec.datatype))
        for spec in config.inputs
    }
    backend.predict(sample)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        backend.predict(sample)
        times.append(time.perf_counter() - started)
    return min(times)


def load_model(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file (with its external data); ``ConfigError`` naming it on failure."""
    try:
        return onnx.load(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ConfigError(f"{path}: not an ONNX model: {exc}") from exc


def onnx_layers(model: onnx.ModelProto) -> tuple[NormLayer, ...]:
    """The normalization layers of the main graph, in node order.

    A BatchNormalization is named after its ``input_mean`` tensor less ``.running_mean``
    (torch's module path), other layers after their scale tensor less ``.weight``; failing
    that, after the module scope in the node name (``/layer1/layer1.0/bn1/X`` ->
    ``layer1.0.bn1``). Statistics are float64 copies. Raises ``ValueError`` for a
    BatchNormalization in training mode or with statistics that are not constants.
    """
    graph = model.graph
    constants = _Constants(graph)
    producers = {output: node for node in graph.node for output in node.output}
    shapes = _Shapes(model)
    layers: list[NormLayer] = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "BatchNormalization":
            layers.append(_batch_norm(node, constants))
        elif node.op_type in _PER_SAMPLE:
            layers.append(_per_sample_norm(node, constants, producers, shapes))
    return tuple(layers)


def _batch_norm(node: onnx.NodeProto, constants: "_Constants") -> NormLayer:
    label = node.name or node.output[0]
    if _attribute(node, "training_mode", 0) != 0 or any(node.output[1:]):
        raise ValueError(
            f"BatchNormalization {label!r} is in training mode: it would normalize with "
            "batch statistics; export the model in eval mode"
        )
    mean_name, var_name = node.input[3], node.input[4]
    mean, var = constants.get(mean_name), constants.get(var_name)
    if mean is None or var is None:
        raise ValueError(
            f"BatchNormalization {label!r}: input_mean and input_var must be constant tensors"
        )
    suffix = ".running_mean"
    name = mean_name.removesuffix(suffix) if mean_name.endswith(suffix) else _scope(node)
    return NormLayer(name, "BatchNorm", mean.size, _eps(node), mean.ravel(), var.ravel())


def _per_sample_norm(
    node: onnx.NodeProto,
    constants: "_Constants",
    producers: dict[str, onnx.NodeProto],
    shapes: "_Shapes",
) -> NormLayer:
    kind = _PER_SAMPLE[node.op_type]
    data = node.input[0]
    reshape = producers.get(data)
    if kind == "InstanceNorm" and reshape is not None and reshape.op_type == "Reshape":
        # torch's legacy exporter writes GroupNorm as Reshape(N, groups, -1) followed by an
        # InstanceNormalization over the groups, then the affine Mul/Add on the channels.
        kind, data = "GroupNorm", reshape.input[0]
    scale_name = node.input[1] if len(node.input) > 1 else ""
    name = scale_name.removesuffix(".weight") if scale_name.endswith(".weight") else _scope(node)
    scale = constants.get(scale_name)
    if kind == "GroupNorm":
        channels = shapes.channels(data) or (scale.size if scale is not None else 0)
    else:  # the scale of LayerNormalization / InstanceNormalization spans the normalized axes
        channels = scale.size if scale is not None else 0
    return NormLayer(name, kind, channels, _eps(node), None, None)


class _Constants:
    """Values of constant tensors: initializers, Constant outputs, and Identity chains of
    them (torch's legacy exporter turns identical initializers into Identity nodes)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._initializers = {tensor.name: tensor for tensor in graph.initializer}
        self._producers = {
            output: node
            for node in graph.node
            if node.op_type in ("Constant", "Identity")
            for output in node.output
        }

    def get(self, name: str) -> npt.NDArray[np.float64] | None:
        seen: set[str] = set()
        while name not in self._initializers:
            node = self._producers.get(name)
            if node is None or name in seen:
                return None
            seen.add(name)
            if node.op_type == "Constant":
                return _constant_value(node)
            name = node.input[0]
        return numpy_helper.to_array(self._initializers[name]).astype(np.float64)


def _constant_value(node: onnx.NodeProto) -> npt.NDArray[np.float64] | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t).astype(np.float64)
        if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attribute), dtype=np.float64)
    return None


class _Shapes:
    """Channel counts from ONNX shape inference, run only if a layer needs one."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._values: dict[str, onnx.ValueInfoProto] | None = None

    def channels(self, name: str) -> int | None:
        if self._values is None:
            try:
                graph = onnx.shape_inference.infer_shapes(self._model).graph
            except Exception:  # inference is a best effort (custom ops, >2 GB models)
                graph = self._model.graph
            infos = [*graph.input, *graph.value_info, *graph.output]
            self._values = {info.name: info for info in infos}
        info = self._values.get(name)
        if info is None or len(info.type.tensor_type.shape.dim) < 2:
            return None
        dim = info.type.tensor_type.shape.dim[1]
        return dim.dim_value if dim.HasField("dim_value") else None


def _attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            return float(onnx.helper.get_attribute_value(attribute))
    return default


def _eps(node: onnx.NodeProto) -> float:
    """The epsilon as the shortest decimal that rounds to the stored float32: ``1e-05``, not
    ``9.99999974e-06``, which is the number the exporter was given whenever that had at most
    seven significant digits (torch's 1e-5, 1e-3)."""
    return float(str(np.float32(_attribute(node, "epsilon", 1e-5))))


def _scope(node: onnx.NodeProto) -> str:
    """The module path in a torch-style node name, else the node name.

    Scopes name a container's child ``<container>.<index>`` after the container's own
    scope: ``/seq/seq.0/seq.0.0/down/down.1/Op`` -> ``seq.0.0.down.1``.
    """
    parts = node.name.strip("/").split("/")
    if not node.name.startswith("/") or len(parts) < 2:
        return node.name or node.output[0]
    path, previous = "", ""
    for part in parts[:-1]:
        if previous and part.startswith(previous + "."):
            path += part[len(previous) :]
        else:
            path = f"{path}.{part}" if path else part
        previous = part
    return path


def _check_signature(graph: onnx.GraphProto, config: ModelConfig) -> None:
    """Config inputs must be exactly the graph's inputs; config outputs a subset of its
    outputs (ORT computes only those asked for)."""
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = {info.name: info for info in graph.input if info.name not in initializers}
    outputs = {info.name: info for info in graph.output}
    wanted = [spec.name for spec in config.inputs]
    if set(wanted) != set(inputs):
        raise ValueError(f"the model's inputs are {sorted(inputs)}, the config lists {wanted}")
    for spec in config.outputs:
        if spec.name not in outputs:
            raise ValueError(
                f"output {spec.name!r} is not an output of the model ({sorted(outputs)})"
            )
    for role, specs, infos in (
        ("input", config.inputs, inputs),
        ("output", config.outputs, outputs),
    ):
        for spec in specs:
            check_tensor(role, spec, _file_tensor(infos[spec.name]), config.max_batch_size)


def _file_tensor(info: onnx.ValueInfoProto) -> FileTensor:
    if not info.type.HasField("tensor_type"):
        raise ValueError(f"{info.name!r} is not a tensor")
    tensor_type = info.type.tensor_type
    datatype: str | None = None
    if tensor_type.elem_type:
        try:
            datatype = to_datatype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):  # bfloat16, strings...: no V2 equivalent
            datatype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    if not tensor_type.HasField("shape"):
        return FileTensor(datatype, None)
    dims = tensor_type.shape.dim
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in dims)
    return FileTensor(datatype, shape)
