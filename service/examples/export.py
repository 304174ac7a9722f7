"""Export a trained module to ``model.onnx`` (BatchNorm nodes kept) and ``model.pt2``.

Both writers check their file against the module's eval forward before returning, so a
build never commits a model that serves different numbers from the one it trained.
"""

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from service.backends.torch.program import SERIALIZATION_LOCK, load_program
from service.examples.data import Float32Array
from service.examples.nets import ARCHITECTURES, batchnorm_modules
from service.examples.train import predict

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_EXPORT_BATCH = 4096
_TOLERANCE = 1e-5


def export_onnx(module: nn.Module, example: Float32Array, path: Path) -> None:
    """Write ``module`` as an opset-17 ONNX graph with a dynamic batch axis.

    The legacy exporter with ``TrainingMode.PRESERVE`` and no constant folding keeps one
    ``BatchNormalization`` node per BatchNorm module (the default export folds them into the
    preceding Conv/Gemm, leaving nothing to recalibrate); this is asserted.
    """
    module.eval()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated but is the one that keeps BN nodes
        # without also adding the dynamo exporter's Shape/Expand noise.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            str(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            opset_version=17,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    model = onnx.load(str(path))
    if _inline_identity_initializers(model):
        onnx.save(model, str(path))
    onnx.checker.check_model(model)
    kept = sum(node.op_type == "BatchNormalization" for node in model.graph.node)
    expected = len(batchnorm_modules(module))
    if kept != expected:
        raise RuntimeError(f"{path}: {kept} BatchNormalization nodes, expected {expected}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (served,) = session.run([OUTPUT_NAME], {INPUT_NAME: example})
    _check_close(path, np.asarray(served), predict(module, example))


def _inline_identity_initializers(model: onnx.ModelProto) -> bool:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer; True if any.

    The legacy exporter deduplicates equal initializers (for example a BatchNorm whose
    ``running_var`` equals its ``weight``) and feeds the duplicate through an Identity node.
    The service rewrites BN statistics by initializer name, so every BN input must be one.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inlined = [
        node for node in graph.node if node.op_type == "Identity" and node.input[0] in initializers
    ]
    for node in inlined:
        array = numpy_helper.to_array(initializers[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(array.copy(), node.output[0]))
        graph.node.remove(node)
    return bool(inlined)


def export_torch(module: nn.Module, example: Float32Array, path: Path) -> None:
    """Write ``module`` as a ``torch.export`` program with a dynamic batch axis (1..4096).

    The file is self-contained: ``torch.export.load(path).module()`` runs without this code.
    """
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    program = torch.export.export(
        module, (torch.from_numpy(example),), dynamic_shapes=({0: batch},)
    )
    with SERIALIZATION_LOCK:
        torch.export.save(program, str(path))
    loaded = load_program(path).module()
    with torch.no_grad():
        served = loaded(torch.from_numpy(example)).numpy()
    _check_close(path, served, predict(module, example))


def load_module(architecture: str, path: Path) -> nn.Module:
    """An ``ARCHITECTURES[architecture]`` module in eval mode with the weights of the
    ``model.pt2`` at ``path`` (an exported program's ``state_dict`` holds parameters and buffers
    by module path)."""
    module = ARCHITECTURES[architecture]()
    module.load_state_dict(load_program(path).state_dict)
    return module.eval()


def _check_close(path: Path, served: Float32Array, expected: Float32Array) -> None:
    if not np.allclose(served, expected, rtol=_TOLERANCE, atol=_TOLERANCE):
        worst = float(np.max(np.abs(served - expected)))
        raise RuntimeError(f"{path}: output differs from the module by up to {worst:.3g}")
