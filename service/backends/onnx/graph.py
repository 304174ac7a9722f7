"""Small edits of ONNX graphs by tensor name, shared by the rewrites (calibration, taps)
and the statistics writer, and the running of a rewritten copy. A tensor name is unique
in a graph (SSA), subgraphs included."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from service.backends.onnx.serving import session_options
from service.errors import ConfigError, InvalidInput


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) operator set the model imports."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def batch_norm_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's standard ``BatchNormalization`` nodes, in node order: the same nodes, in
    the same order, as ``layers.onnx_layers``' BatchNorm layers."""
    return [
        node
        for node in graph.node
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx")
    ]


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` and of its subgraphs (If/Loop/Scan bodies), recursively."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                nodes.extend(all_nodes(sub))
    return nodes


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in use, for ``fresh_name``."""
    used = {i.name for i in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in all_nodes(graph):
        used.update(node.input)
        used.update(node.output)
        used.add(node.name)
    return used


def fresh_name(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_<k>`` if taken; recorded in ``used``."""
    name, index = stem, 0
    while name in used:
        index += 1
        name = f"{stem}_{index}"
    used.add(name)
    return name


def readers(graph: onnx.GraphProto, name: str) -> int:
    """How many node inputs (subgraphs included) read tensor ``name``."""
    return sum(value == name for node in all_nodes(graph) for value in node.input)


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere: its producer, its readers (subgraphs too), its infos."""
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new
    for info in (*graph.input, *graph.value_info):
        if info.name == old:
            info.name = new
    for node in all_nodes(graph):
        for names in (node.input, node.output):
            for index, value in enumerate(names):
                if value == old:
                    names[index] = new


def drop_unread_constant(graph: onnx.GraphProto, name: str) -> None:
    """Remove the Identity/Constant node producing ``name`` if nothing reads it any more."""
    if readers(graph, name) or any(output.name == name for output in graph.output):
        return
    for node in graph.node:
        if node.op_type in ("Identity", "Constant") and list(node.output) == [name]:
            graph.node.remove(node)
            return


def constant_dtype(graph: onnx.GraphProto, name: str) -> np.dtype[np.generic]:
    """The dtype of the constant behind ``name`` (an initializer, or a Constant, through
    Identity nodes); float32 when it is not one."""
    initializers = {i.name: i for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    for _ in range(len(graph.node) + 1):  # bounded: a malformed graph may have a cycle
        if name in initializers:
            return np.dtype(helper.tensor_dtype_to_np_dtype(initializers[name].data_type))
        node = producers.get(name)
        if node is None or node.op_type not in ("Identity", "Constant"):
            break
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is None:  # value_float(s): float32
                break
            return np.dtype(helper.tensor_dtype_to_np_dtype(value.data_type))
        name = node.input[0]
    return np.dtype(np.float32)


def set_own_constant(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    slot: int,
    values: npt.NDArray[np.float64],
    used: set[str],
) -> None:
    """Make ``node.input[slot]`` read an initializer of its own holding ``values`` (in the
    dtype of the constant it replaces), keeping the name it reads.

    An initializer read by this input alone is replaced in place. Otherwise (another node
    reads it too, or an Identity/Constant node produces it) the tensor's other readers move
    to a fresh name and the node gets a new initializer under the old name; a producer left
    without readers is removed. Only a graph output keeps its name: the node then reads a
    fresh one."""
    graph = model.graph
    name = node.input[slot]
    initializer = next((i for i in graph.initializer if i.name == name), None)
    tensor = numpy_helper.from_array(values.astype(constant_dtype(graph, name)), name)
    is_output = any(output.name == name for output in graph.output)
    if initializer is not None and readers(graph, name) == 1 and not is_output:
        initializer.CopyFrom(tensor)
        return
    moved = fresh_name(f"{name}.shared", used)
    if is_output:  # a graph output keeps its name: the BatchNorm reads a new one instead
        node.input[slot] = tensor.name = moved
    else:
        rename_tensor(graph, name, moved)
        node.input[slot] = name
        drop_unread_constant(graph, moved)
    graph.initializer.append(tensor)
    if model.ir_version < 4:  # initializers had to be listed as graph inputs then
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, None))


def rewritten_session(
    model: onnx.ModelProto, threads: int, path: Path, what: str, spinning: bool = False
) -> ort.InferenceSession:
    """A CPU session with the serving options on ``model``, a rewritten copy of the file at
    ``path``; ``ConfigError`` naming ``what`` (e.g. "the tapped graph") if it cannot load."""
    try:
        return ort.InferenceSession(
            model.SerializeToString(),
            sess_options=session_options(threads, spinning),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own types
        raise ConfigError(f"{path}: onnxruntime cannot load {what}: {exc}") from exc


def run_outputs(
    session: ort.InferenceSession,
    input_names: list[str],
    outputs: list[str],
    inputs: Mapping[str, npt.NDArray[Any]],
) -> dict[str, npt.NDArray[Any]]:
    """``outputs`` by name, computed from the ``input_names`` entries of ``inputs`` (others
    are ignored); ``InvalidInput`` naming any that is missing."""
    missing = [name for name in input_names if name not in inputs]
    if missing:
        raise InvalidInput(f"missing model input(s) {missing}")
    feed = {name: inputs[name] for name in input_names}
    return dict(zip(outputs, session.run(outputs, feed), strict=True))
