"""The normalization layers of an ONNX model, read from its graph.

Shared by serving (``OnnxBackend.layers``), ``bnserve inspect`` and the rewrites
(calibration, taps, the statistics writer), which name layers the same way.
"""

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from service.backends.base import LayerKind, NormLayer
from service.errors import ConfigError

_PER_SAMPLE: dict[str, LayerKind] = {
    "LayerNormalization": "LayerNorm",
    "GroupNormalization": "GroupNorm",
    "InstanceNormalization": "InstanceNorm",
}


def load_model(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file (with its external data); ``ConfigError`` naming it on failure."""
    try:
        return onnx.load(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ConfigError(f"{path}: not an ONNX model: {exc}") from exc


def read_layers(path: Path) -> tuple[NormLayer, ...]:
    """The normalization layers of the file at ``path``; ``ConfigError`` naming it when it
    cannot be read or a layer is invalid."""
    try:
        return onnx_layers(load_model(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def batch_norm_channels(model: onnx.ModelProto, path: Path) -> dict[str, int]:
    """BatchNorm layer name -> channels, in node order, named as the serving backend does
    (the order of ``graph.batch_norm_nodes``); ``ConfigError`` naming ``path`` when the
    layers cannot be read or two share a name."""
    try:
        layers = [layer for layer in onnx_layers(model) if layer.kind == "BatchNorm"]
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    names = {layer.name: layer.channels for layer in layers}
    if len(names) != len(layers):
        raise ConfigError(f"{path}: two BatchNormalization nodes have the same layer name")
    return names


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
