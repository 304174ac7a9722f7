"""The batch-statistics forward of ONNX models (``BatchStatsForward``).

The forward runs a calibration graph built once from the file, in which every selected
``BatchNormalization`` normalizes with the statistics of the current batch and exposes them:

- default: the node itself gets ``training_mode=1, momentum=0``, so its optional outputs
  ``running_mean``/``running_var`` are exactly the batch mean and *biased* batch variance
  (ONNX opset 14 semantics; onnxruntime's CPU provider follows them, which the tests check
  against torch). A file below opset 14 is converted to opset 15 first (onnx's version
  converter).
- ``portable=True`` (or when the conversion fails): the node is replaced by plain operators,
  ``Reshape(N, C, -1)`` -> centred ``ReduceMean`` over axes (0, 2) -> normalize, for execution
  providers that reject training mode (onnxruntime's CUDA provider does). Same numbers to
  float32 rounding.

Each layer also gets a ``Size`` of its input, so the host knows ``n = numel / C``. Fusion
(``ORT_ENABLE_ALL``) still folds the unselected BatchNorms; it never applies to the rewritten
ones. Layer names are ``layers.onnx_layers``' (``input_mean`` name less ``.running_mean``).
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, version_converter

from service.backends.calibration import recalibrated_layers
from service.backends.onnx.graph import (
    all_nodes,
    batch_norm_nodes,
    default_opset,
    fresh_name,
    rewritten_session,
    run_outputs,
    used_names,
)
from service.backends.onnx.layers import batch_norm_channels, load_model
from service.errors import ConfigError
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
        values = run_outputs(self._session, self._input_names, self._outputs, inputs)
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
    names = batch_norm_channels(model, path)
    selected = recalibrated_layers(list(names), layers)
    opset = default_opset(model)
    if not portable and opset < _TRAINING_OPSET:
        try:
            model = version_converter.convert_version(model, 15)
            opset = 15
        except Exception:  # the converter lacks adapters for many ops: fall back, same numbers
            portable = True
    found = batch_norm_nodes(model.graph)
    if len(found) != len(names):
        raise ConfigError(f"{path}: the opset conversion changed the BatchNormalization nodes")
    nodes = dict(zip(names, found, strict=True))
    graph = _Rewriter(model, opset)
    taps = {
        name: graph.portable(nodes[name], name) if portable else graph.training(nodes[name], name)
        for name in selected
    }
    graph.finish()
    # No spinning: the forward runs while the next batches are received and parsed
    # (``recalibration.pipeline``), and spinning workers take those threads' cores. Measured on
    # 2 shared cores with the overlap: digits 1.6x the samples/s at 30% less CPU, ResNet-18
    # 15% less CPU per stream; the 12% that spinning once bought was without the overlap.
    session = rewritten_session(model, threads, path, "the calibration graph", spinning=False)
    return OnnxBatchStats(session, taps, {name: names[name] for name in selected})


class _Rewriter:
    """Edits one graph in place: new node lists per BatchNorm, new names that do not clash."""

    def __init__(self, model: onnx.ModelProto, opset: int) -> None:
        self._graph = model.graph
        self._opset = opset
        self._replaced: dict[int, list[onnx.NodeProto]] = {}
        self._used = used_names(model.graph)
        self._types: dict[str, int] | None = None
        self._unread: set[str] = set()
        self._model = model

    def fresh(self, stem: str) -> str:
        return fresh_name(stem, self._used)

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
        v = self._portable_names(layer, eps, dtype)
        self._unread.update(node.input[3:5])

        def op(kind: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
            return helper.make_node(kind, inputs, [output], name=self.fresh(output), **attrs)

        def reduce_mean(source: str, output: str) -> onnx.NodeProto:
            if self._opset >= _AXES_AS_INPUT_OPSET:
                return op("ReduceMean", [source, v["axes"]], output)
            return op("ReduceMean", [source], output, axes=[0, 2])

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

    def _portable_names(self, layer: str, eps: float, dtype: int) -> dict[str, str]:
        """Fresh names for the portable form's tensors; its constants added as initializers."""
        stems = "ncl c1 flat axes eps x3 mean3 centred square var3 var_eps std normed"
        stems += " scale_x scale3 bias_x bias3 scaled y3 shape"
        v = {s: self.fresh(f"bnserve_calibration/{layer}/{s}") for s in stems.split()}
        constants = {
            "ncl": np.array([0, 0, -1], np.int64),
            "c1": np.array([-1, 1], np.int64),
            "flat": np.array([-1], np.int64),
            "eps": np.array(eps, helper.tensor_dtype_to_np_dtype(dtype)),
        }
        if self._opset >= _AXES_AS_INPUT_OPSET:  # an attribute before
            constants["axes"] = np.array([0, 2], np.int64)
        for key, value in constants.items():
            self._graph.initializer.append(numpy_helper.from_array(value, v[key]))
        return v

    def finish(self) -> None:
        """Splice the replacements into the node list, keeping it topologically sorted."""
        nodes = [new for node in self._graph.node for new in self._replaced.get(id(node), [node])]
        del self._graph.node[:]
        self._graph.node.extend(nodes)
        # the replaced nodes' statistics, unless something else reads them (onnxruntime
        # warns about every unused initializer)
        read = {name for node in all_nodes(self._graph) for name in node.input}
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
