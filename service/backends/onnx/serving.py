"""ONNX models served with onnxruntime.

The file keeps its ``BatchNormalization`` nodes (drift taps and recalibration rewrite them);
the serving session fuses each into the preceding Conv/Gemm when it is created, so serving
pays nothing for them. The fused session bakes the statistics in: new statistics need a new
file and a new session.
"""

from pathlib import Path

import onnx
import onnxruntime as ort

from service.backends.base import Arrays
from service.backends.cost import call_seconds
from service.backends.onnx.layers import load_model, onnx_layers
from service.backends.onnx.names import PLATFORM
from service.backends.signature import FileTensor, ModelSignature, check_tensor
from service.datatypes import to_datatype
from service.errors import ConfigError


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
        self, path: Path, config: ModelSignature, threads: int = 0, spinning: bool | None = None
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
        if spinning is None and call_seconds(self.predict, config, 1) < SPIN_ABOVE_SECONDS:
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


def _check_signature(graph: onnx.GraphProto, config: ModelSignature) -> None:
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
