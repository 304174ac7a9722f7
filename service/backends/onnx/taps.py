"""The eval-mode tapped forward of an ONNX model (``TappedForward``).

A copy of the graph is rewritten once: every ``BatchNormalization`` stays as it is (eval
mode, stored statistics) and its input ``X`` of shape ``(N, C, *spatial)`` also feeds side
reductions over the spatial axes, added as graph outputs::

    mean = ReduceMean(X, spatial, keepdims=1)            (N, C, 1, ...)
    m2   = ReduceSumSquare(X - mean, spatial, keepdims=1)  centred: float32 suffices
    size = Size(X)                                         positions = size / (N * C)

converted to float64 on the host. A rank-2 input (BatchNorm1d after Gemm) is its own
per-sample mean with ``m2 = 0``: only ``Identity(X)`` is added. When shape inference cannot
tell the rank, ``X`` is reshaped to ``(N, C, -1)`` first, which is right for any rank.
Float16/bfloat16 inputs are reduced in float32. Constants are ``Constant`` nodes, which
any IR version accepts (initializers had to be graph inputs too before IR 4).

The session uses the serving options (``ORT_ENABLE_ALL``). A Conv whose output also feeds
the reductions is not fused with its BatchNorm (the fusion needs a single consumer), which
only costs time: the BatchNorm then runs as its own eval-mode node, with the same result.
The model's own outputs are not graph outputs of the copy, so onnxruntime drops the nodes
that only they need.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from service.backends.base import Arrays
from service.backends.onnx.graph import (
    batch_norm_nodes,
    default_opset,
    fresh_name,
    rewritten_session,
    run_outputs,
    used_names,
)
from service.backends.onnx.layers import load_model, onnx_layers
from service.backends.taps import SampleMoments
from service.errors import ConfigError

_AXES_AS_INPUT_OPSET = 18  # ReduceMean and ReduceSumSquare take their axes as an input
_WIDENED = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class _Tap:
    """The copy's outputs for one layer: ``m2`` and ``size`` are ``None`` for a rank-2
    input, whose ``mean`` output is the input itself."""

    mean: str
    m2: str | None
    size: str | None


class OnnxTaps:
    """The tapped session of one model file. Immutable after construction;
    ``sample_moments`` may be called from any thread (onnxruntime's ``run`` is thread-safe)."""

    def __init__(self, session: ort.InferenceSession, taps: dict[str, _Tap]) -> None:
        self.layers = tuple(taps)
        self._session = session
        self._taps = taps
        self._input_names = [info.name for info in session.get_inputs()]
        self._outputs = [
            name
            for tap in taps.values()
            for name in (tap.mean, tap.m2, tap.size)
            if name is not None
        ]

    def sample_moments(self, inputs: Arrays) -> dict[str, SampleMoments]:
        values = run_outputs(self._session, self._input_names, self._outputs, inputs)
        return {name: _sample_moments(tap, values) for name, tap in self._taps.items()}


def _sample_moments(tap: _Tap, values: dict[str, npt.NDArray[Any]]) -> SampleMoments:
    raw = values[tap.mean]
    samples, channels = int(raw.shape[0]), int(raw.shape[1])
    mean = raw.reshape(samples, channels).astype(np.float64)
    if tap.m2 is None or tap.size is None:
        return SampleMoments(1, mean, np.zeros_like(mean))
    instances = samples * channels
    positions = int(values[tap.size]) // instances if instances else 1
    m2 = values[tap.m2].reshape(samples, channels).astype(np.float64)
    return SampleMoments(positions, mean, m2)


def onnx_taps(path: Path, threads: int = 0) -> OnnxTaps:
    """The tapped forward of the ONNX file at ``path``; ``threads`` intra-op threads (0: the
    default). Raises ``ConfigError`` for a file that cannot be read, tapped or loaded."""
    model = load_model(path)
    try:
        names = [layer.name for layer in onnx_layers(model) if not layer.batch_independent]
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    nodes = batch_norm_nodes(model.graph)
    if len(set(names)) != len(names) or len(nodes) != len(names):
        raise ConfigError(f"{path}: cannot name the BatchNormalization nodes uniquely: {names}")
    builder = _TapBuilder(model)
    taps = {name: builder.tap(node.input[0], name) for name, node in zip(names, nodes, strict=True)}
    builder.finish(taps.values())
    return OnnxTaps(rewritten_session(model, threads, path, "the tapped graph"), taps)


class _TapBuilder:
    """Adds the reductions of ``_Tap`` to one graph, in place. New nodes only read tensors
    the original graph produces, so appending them keeps the node list topologically sorted."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._graph = model.graph
        self._opset = default_opset(model)
        self._used = used_names(model.graph)
        self._ranks, self._types = _inferred_types(model)
        self._nodes: list[onnx.NodeProto] = []

    def tap(self, x: str, layer: str) -> _Tap:
        stem = f"bnserve_taps/{layer}"
        rank = self._ranks.get(x)
        if rank == 2:
            mean = self._fresh(f"{stem}/mean")
            self._op("Identity", [x], mean)
            return _Tap(mean, None, None)
        size = self._op("Size", [x], self._fresh(f"{stem}/size"))
        if self._types.get(x) in _WIDENED:
            x = self._op("Cast", [x], self._fresh(f"{stem}/float"), to=onnx.TensorProto.FLOAT)
        if rank is None:  # (N, C, -1) fits every rank
            shape = self._constant(np.array([0, 0, -1], np.int64), f"{stem}/ncl")
            x, rank = self._op("Reshape", [x, shape], self._fresh(f"{stem}/ncl_x")), 3
        axes = list(range(2, rank))
        mean = self._reduce("ReduceMean", x, axes, self._fresh(f"{stem}/mean"))
        centred = self._op("Sub", [x, mean], self._fresh(f"{stem}/centred"))
        m2 = self._reduce("ReduceSumSquare", centred, axes, self._fresh(f"{stem}/m2"))
        return _Tap(mean, m2, size)

    def finish(self, taps: Iterable[_Tap]) -> None:
        """Append the new nodes; make the taps the only graph outputs."""
        self._graph.node.extend(self._nodes)
        del self._graph.output[:]
        for tap in taps:
            for name in (tap.mean, tap.m2, tap.size):
                if name is not None:
                    self._graph.output.append(helper.make_empty_tensor_value_info(name))

    def _reduce(self, kind: str, x: str, axes: list[int], output: str) -> str:
        if self._opset >= _AXES_AS_INPUT_OPSET:
            name = self._constant(np.array(axes, np.int64), f"{output}_axes")
            return self._op(kind, [x, name], output, keepdims=1)
        return self._op(kind, [x], output, axes=axes, keepdims=1)

    def _op(self, kind: str, inputs: list[str], output: str, **attributes: Any) -> str:
        node = helper.make_node(kind, inputs, [output], name=self._fresh(output), **attributes)
        self._nodes.append(node)
        return output

    def _constant(self, value: npt.NDArray[np.int64], stem: str) -> str:
        name = self._fresh(stem)
        return self._op("Constant", [], name, value=numpy_helper.from_array(value, name))

    def _fresh(self, stem: str) -> str:
        return fresh_name(stem, self._used)


def _inferred_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Rank and element type of every tensor shape inference can tell (input shapes have a
    symbolic batch axis, so ranks are known for ordinary exports); empty if it fails."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # a best effort (custom ops, > 2 GB models): the rank-free path works
        return {}, {}
    ranks: dict[str, int] = {}
    types: dict[str, int] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type:
            types[info.name] = tensor.elem_type
        if tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    return ranks, types
