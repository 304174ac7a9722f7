"""Recalibration for ONNX models: the batch-statistics forward and the statistics writer.

The forward runs a calibration graph built once from the file, in which every selected
``BatchNormalization`` normalizes with the statistics of the current batch and exposes them:

- default: the node itself gets ``training_mode=1, momentum=0``, so its optional outputs
  ``running_mean``/``running_var`` are exactly the batch mean and *biased* batch variance
  (ONNX opset 14 semantics, checked on onnxruntime 1.31's CPU provider, notes 3.2). A file
  below opset 14 is converted to opset 15 first (onnx's version converter).
- ``portable=True`` (or when the conversion fails): the node is replaced by plain operators,
  ``Reshape(N, C, -1)`` -> centred ``ReduceMean`` over axes (0, 2) -> normalize, for execution
  providers that reject training mode (CUDA, notes 3.2). Same numbers to float32 rounding.

Each layer also gets a ``Size`` of its input, so the host knows ``n = numel / C``. Fusion
(``ORT_ENABLE_ALL``) still folds the unselected BatchNorms; it never applies to the rewritten
ones. Layer names are ``onnx_layers``' (``input_mean`` name less ``.running_mean``).
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from service.backends.calibration import Statistics, checked_statistics, select_layers
from service.backends.onnx_backend import load_model, onnx_layers, session_options
from service.errors import ConfigError, InvalidInput
from service.stats.moments import Moments

_TRAINING_OPSET = 14  # training_mode and the running_mean/running_var outputs
_AXES_AS_INPUT_OPSET = 18  # ReduceMean takes its axes as an input from here on


@dataclass(frozen=True)
class _Taps:
    """The calibration graph's outputs for one layer."""

    mean: str
    var: str  # biased
    size: str  # numel of the layer's input


class OnnxBatchStats:
    """The calibration session of one model file (``BatchStatsForward``).

    Immutable after construction; ``batch_moments`` may be called from any thread (an
    onnxruntime session's ``run`` is thread-safe).
    """

    def __init__(
        self, session: ort.InferenceSession, taps: dict[str, _Taps], channels: dict[str, int]
    ) -> None:
        self.layers = tuple(taps)
        self._session = session
        self._taps = taps
        self._channels = channels
        self._input_names = [i.name for i in session.get_inputs()]
        self._outputs = [name for tap in taps.values() for name in (tap.mean, tap.var, tap.size)]

    def batch_moments(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, Moments]:
        missing = [name for name in self._input_names if name not in inputs]
        if missing:
            raise InvalidInput(f"missing model input(s) {missing}")
        feed = {name: inputs[name] for name in self._input_names}
        values = dict(zip(self._outputs, self._session.run(self._outputs, feed), strict=True))
        moments: dict[str, Moments] = {}
        for name, tap in self._taps.items():
            n = float(values[tap.size]) / self._channels[name]
            moments[name] = Moments.from_summary(n, values[tap.mean], values[tap.var])
        return moments


def onnx_batch_stats(
    path: Path, layers: Collection[str] | None = None, threads: int = 0, portable: bool = False
) -> OnnxBatchStats:
    """The recalibration forward of ``path`` for ``layers`` (all BatchNorms when ``None``).

    Raises ``InvalidInput`` for a name that is not a BatchNorm of the file, ``ConfigError``
    for a file that cannot be read or rewritten. ``threads``: intra-op threads (0: default).
    """
    model = load_model(path)
    names = _layer_names(model, path)
    selected = select_layers(list(names), layers)
    opset = _opset(model)
    if not portable and opset < _TRAINING_OPSET:
        try:
            model = version_converter.convert_version(model, 15)
            opset = 15
        except Exception:  # the converter lacks adapters for many ops: fall back, same numbers
            portable = True
    nodes = _batch_norm_nodes(model)
    if len(nodes) != len(names):
        raise ConfigError(f"{path}: the opset conversion changed the BatchNormalization nodes")
    graph = _Rewriter(model, opset)
    taps = {}
    for (name, channels), node in zip(names.items(), nodes, strict=True):
        if name in selected:
            taps[name] = graph.portable(node, name) if portable else graph.training(node, name)
    graph.finish()
    try:
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own types
        raise ConfigError(f"{path}: onnxruntime cannot load the calibration graph: {exc}") from exc
    return OnnxBatchStats(session, taps, {name: names[name] for name in selected})


def _layer_names(model: onnx.ModelProto, path: Path) -> dict[str, int]:
    """BatchNorm layer name -> channels, in node order, named as the serving backend does."""
    try:
        layers = onnx_layers(model)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return {layer.name: layer.channels for layer in layers if layer.kind == "BatchNorm"}


def _batch_norm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    # the same nodes, in the same order, as onnx_layers' BatchNorm layers
    return [
        node
        for node in model.graph.node
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")
    ]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


class _Rewriter:
    """Edits one graph in place: new node lists per BatchNorm, new names that do not clash."""

    def __init__(self, model: onnx.ModelProto, opset: int) -> None:
        self._graph = model.graph
        self._opset = opset
        self._replaced: dict[int, list[onnx.NodeProto]] = {}
        self._used = _used_names(model.graph)
        self._types: dict[str, int] | None = None
        self._unread: set[str] = set()
        self._model = model

    def fresh(self, stem: str) -> str:
        return _fresh(stem, self._used)

    def _taps(self, node: onnx.NodeProto, layer: str) -> _Taps:
        stem = f"bnserve_calibration/{layer}"
        taps = _Taps(self.fresh(f"{stem}/mean"), self.fresh(f"{stem}/var"), self.fresh(f"{stem}/n"))
        for output in (taps.mean, taps.var, taps.size):
            self._graph.output.append(helper.make_empty_tensor_value_info(output))
        return taps

    def training(self, node: onnx.NodeProto, layer: str) -> _Taps:
        """``training_mode=1, momentum=0``: the running outputs are the batch statistics."""
        taps = self._taps(node, layer)
        kept = [a for a in node.attribute if a.name not in ("training_mode", "momentum")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend(
            [helper.make_attribute("training_mode", 1), helper.make_attribute("momentum", 0.0)]
        )
        del node.output[1:]
        node.output.extend([taps.mean, taps.var])
        size = helper.make_node("Size", [node.input[0]], [taps.size], name=self.fresh(taps.size))
        self._replaced[id(node)] = [node, size]
        return taps

    def portable(self, node: onnx.NodeProto, layer: str) -> _Taps:
        """Plain operators: ``y = (x - mean) / sqrt(var + eps) * scale + B`` with the biased
        batch statistics over every axis but 1, computed on ``x`` reshaped to (N, C, -1), so
        that any rank works without knowing it."""
        taps = self._taps(node, layer)
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        dtype = self._elem_type(x)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        stems = "ncl c1 flat axes eps x3 mean3 centred square var3 var_eps std normed"
        stems += " scale_x scale3 bias_x bias3 scaled y3 shape"
        v = {s: self.fresh(f"bnserve_calibration/{layer}/{s}") for s in stems.split()}
        constants = {
            "ncl": np.array([0, 0, -1], np.int64),
            "c1": np.array([-1, 1], np.int64),
            "flat": np.array([-1], np.int64),
            "axes": np.array([2], np.int64),
            "eps": np.array(eps, helper.tensor_dtype_to_np_dtype(dtype)),
        }
        if self._opset < _AXES_AS_INPUT_OPSET:
            del constants["axes"]  # an attribute instead
        for key, value in constants.items():
            self._graph.initializer.append(numpy_helper.from_array(value, v[key]))
        self._unread.update(node.input[3:5])

        def op(kind: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
            return helper.make_node(kind, inputs, [output], name=self.fresh(output), **attrs)

        def reduce_mean(source: str, output: str) -> onnx.NodeProto:
            if self._opset >= _AXES_AS_INPUT_OPSET:
                return op("ReduceMean", [source, v["axes"]], output)
            return op("ReduceMean", [source], output, axes=[2])

        self._replaced[id(node)] = [
            op("Reshape", [x, v["ncl"]], v["x3"]),
            reduce_mean(v["x3"], v["mean3"]),
            op("Sub", [v["x3"], v["mean3"]], v["centred"]),
            op("Mul", [v["centred"], v["centred"]], v["square"]),
            reduce_mean(v["square"], v["var3"]),
            op("Add", [v["var3"], v["eps"]], v["var_eps"]),
            op("Sqrt", [v["var_eps"]], v["std"]),
            op("Div", [v["centred"], v["std"]], v["normed"]),
            # scale and B may have their own type from opset 15 on: normalize in x's
            op("Cast", [scale], v["scale_x"], to=dtype),
            op("Reshape", [v["scale_x"], v["c1"]], v["scale3"]),
            op("Cast", [bias], v["bias_x"], to=dtype),
            op("Reshape", [v["bias_x"], v["c1"]], v["bias3"]),
            op("Mul", [v["normed"], v["scale3"]], v["scaled"]),
            op("Add", [v["scaled"], v["bias3"]], v["y3"]),
            op("Shape", [x], v["shape"]),
            op("Reshape", [v["y3"], v["shape"]], node.output[0]),
            op("Reshape", [v["mean3"], v["flat"]], taps.mean),
            op("Reshape", [v["var3"], v["flat"]], taps.var),
            op("Size", [x], taps.size),
        ]
        return taps

    def finish(self) -> None:
        """Splice the replacements into the node list, keeping it topologically sorted."""
        nodes = [new for node in self._graph.node for new in self._replaced.get(id(node), [node])]
        del self._graph.node[:]
        self._graph.node.extend(nodes)
        # the replaced nodes' statistics, unless something else reads them (onnxruntime
        # warns about every unused initializer)
        read = {name for node in _all_nodes(self._graph) for name in node.input}
        read.update(output.name for output in self._graph.output)
        unread = [i for i in self._graph.initializer if i.name in self._unread - read]
        for initializer in unread:
            self._graph.initializer.remove(initializer)
        names = {initializer.name for initializer in unread}
        for info in [i for i in self._graph.input if i.name in names]:  # IR < 4 lists them
            self._graph.input.remove(info)

    def _elem_type(self, name: str) -> int:
        """The element type of a tensor, from shape inference (float32 if unknown)."""
        if self._types is None:
            try:
                graph = onnx.shape_inference.infer_shapes(self._model).graph
            except Exception:  # a best effort (custom ops, > 2 GB models)
                graph = self._model.graph
            infos = [*graph.input, *graph.value_info, *graph.output]
            self._types = {i.name: i.type.tensor_type.elem_type for i in infos}
        return self._types.get(name) or onnx.TensorProto.FLOAT


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {i.name for i in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in _all_nodes(graph):
        used.update(node.input)
        used.update(node.output)
        used.add(node.name)
    return used


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` and of its subgraphs (If/Loop/Scan bodies), recursively."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                nodes.extend(_all_nodes(sub))
    return nodes


def write_onnx_statistics(src: Path, dest: Path, stats: Statistics) -> None:
    """Copy ``src`` to ``dest`` with the ``input_mean``/``input_var`` of the named BatchNorms
    replaced by ``stats`` (torch's convention: ``running_var`` is the unbiased variance, so
    both forms of one model hold the same numbers), in the dtype of the tensors they replace.

    A statistic that another node also reads, or that an Identity/Constant node produces,
    is not changed in place: the BatchNorm gets its own new initializer under the name it
    reads (so its layer name stays), and the other readers move to a new name. Raises
    ``InvalidInput`` naming the layer for an unknown name or a wrong channel count. Writes
    only ``dest``.
    """
    model = load_model(src)
    names = _layer_names(model, src)
    checked = checked_statistics(names, stats)
    nodes = dict(zip(names, _batch_norm_nodes(model), strict=True))
    used = _used_names(model.graph)
    for name, (mean, var) in checked.items():
        _own_initializer(model, nodes[name], 3, mean, used)
        _own_initializer(model, nodes[name], 4, var, used)
    onnx.save(model, dest)


def _own_initializer(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    slot: int,
    values: npt.NDArray[np.float64],
    used: set[str],
) -> None:
    graph = model.graph
    name = node.input[slot]
    initializer = next((i for i in graph.initializer if i.name == name), None)
    tensor = numpy_helper.from_array(values.astype(_source_dtype(graph, name)), name)
    readers = sum(inp == name for other in _all_nodes(graph) for inp in other.input)
    is_output = any(output.name == name for output in graph.output)
    if initializer is not None and readers == 1 and not is_output:
        initializer.CopyFrom(tensor)
        return
    moved = _fresh(f"{name}.shared", used)
    if is_output:  # a graph output keeps its name: the BatchNorm reads a new one instead
        node.input[slot] = tensor.name = moved
    else:
        _rename(graph, name, moved)
        node.input[slot] = name
        _drop_if_unread(graph, moved)
    graph.initializer.append(tensor)
    if model.ir_version < 4:  # initializers had to be listed as graph inputs then
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, None))


def _source_dtype(graph: onnx.GraphProto, name: str) -> np.dtype[np.generic]:
    """The dtype of the constant behind ``name`` (through Identity nodes), else float32."""
    initializers = {i.name: i for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    for _ in range(len(graph.node) + 1):
        if name in initializers:
            return np.dtype(helper.tensor_dtype_to_np_dtype(initializers[name].data_type))
        node = producers.get(name)
        if node is None or node.op_type not in ("Identity", "Constant"):
            break
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return np.dtype(helper.tensor_dtype_to_np_dtype(value.data_type if value else 1))
        name = node.input[0]
    return np.dtype(np.float32)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere: its producer, its readers (subgraphs too), its infos."""
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new
    for info in (*graph.input, *graph.value_info):
        if info.name == old:
            info.name = new
    for node in _all_nodes(graph):
        for names in (node.input, node.output):
            for index, value in enumerate(names):
                if value == old:
                    names[index] = new


def _drop_if_unread(graph: onnx.GraphProto, name: str) -> None:
    """Remove the Identity/Constant node producing ``name`` if nothing reads it any more."""
    if any(name in node.input for node in _all_nodes(graph)):
        return
    for node in graph.node:
        if node.op_type in ("Identity", "Constant") and list(node.output) == [name]:
            graph.node.remove(node)
            return


def _fresh(stem: str, used: set[str]) -> str:
    name, index = stem, 0
    while name in used:
        index += 1
        name = f"{stem}_{index}"
    used.add(name)
    return name
