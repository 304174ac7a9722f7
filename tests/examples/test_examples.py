"""The committed example models in ``models/`` and the example data (no training here)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from service.backends.torch.program import load_program
from service.config import load_model_config
from service.examples import (
    ARCHITECTURES,
    CORRUPTIONS,
    EXAMPLES,
    DigitsCNN,
    batchnorm_modules,
    corrupt,
    load_digits_split,
    load_module,
    recalibrate_bn,
)
from service.examples.build import ADAPTIVE
from service.examples.export import export_onnx

MODELS = Path(__file__).resolve().parents[2] / "models"
ARCHITECTURE_NAMES = [example.architecture for example in EXAMPLES]
BY_ARCHITECTURE = {example.architecture: example for example in EXAMPLES}
SPLITS = {example.architecture: example.load() for example in EXAMPLES}
TEST_SPLITS = {architecture: split[2:] for architecture, split in SPLITS.items()}


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x})
    return np.asarray(logits)


def _torch_logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(module(torch.from_numpy(x)).numpy())


def test_families_cover_the_repository() -> None:
    expected = {f + suffix for f in ARCHITECTURES for suffix in ("", "_torch")} | {ADAPTIVE}
    assert {p.name for p in MODELS.iterdir() if p.is_dir()} == expected


def test_adaptive_example_is_digits_with_adaptation_on() -> None:
    folder, digits = MODELS / ADAPTIVE, MODELS / "digits"
    for name in ("active", "1/model.onnx", "1/reference.npy"):
        assert (folder / name).read_bytes() == (digits / name).read_bytes()
    config = load_model_config(folder / "config.toml")
    plain = load_model_config(digits / "config.toml")
    assert config.adaptation.trigger == "propose" and config.adaptation.capture == 2048
    assert config.model_dump(exclude={"adaptation", "drift"}) == plain.model_dump(
        exclude={"adaptation", "drift"}
    )


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_model_folder_is_valid(architecture: str, backend: str) -> None:
    folder = MODELS / (architecture if backend == "onnx" else f"{architecture}_torch")
    config = load_model_config(folder / "config.toml")
    assert config.backend == backend
    assert [(s.name, s.datatype) for s in config.inputs] == [("input", "FP32")]
    assert [(s.name, s.datatype) for s in config.outputs] == [("logits", "FP32")]
    assert (folder / "active").read_text() == "1\n"
    assert (folder / "1" / config.model_file).is_file()
    assert config.outputs[0].shape == (BY_ARCHITECTURE[architecture].classes,)
    reference = np.load(folder / "1" / "reference.npy", allow_pickle=False)
    x_train = SPLITS[architecture][0]
    assert reference.dtype == np.float32
    assert reference.shape[1:] == config.inputs[0].shape == x_train.shape[1:]
    np.testing.assert_array_equal(reference, x_train[:2048])  # the training inputs


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_onnx_keeps_one_batchnorm_node_per_module(architecture: str) -> None:
    graph = onnx.load(str(MODELS / architecture / "1" / "model.onnx")).graph
    nodes = [n for n in graph.node if n.op_type == "BatchNormalization"]
    initializers = {init.name for init in graph.initializer}
    assert len(nodes) == len(batchnorm_modules(ARCHITECTURES[architecture]())) > 0
    # Statistics are rewritten by initializer name: every BN parameter must be one.
    assert all(name in initializers for node in nodes for name in node.input[1:])


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_both_forms_match_the_rebuilt_module(architecture: str) -> None:
    pt2 = MODELS / f"{architecture}_torch" / "1" / "model.pt2"
    module = load_module(architecture, pt2)
    x_test, _ = TEST_SPLITS[architecture]
    expected = _torch_logits(module, x_test)
    served_onnx = _onnx_logits(MODELS / architecture / "1" / "model.onnx", x_test)
    served_torch = _torch_logits(load_program(str(pt2)).module(), x_test)
    np.testing.assert_allclose(served_onnx, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served_torch, expected, rtol=1e-5, atol=1e-5)
    # One sample alone gives its row of the batch (eval mode, dynamic batch axis).
    np.testing.assert_allclose(
        _onnx_logits(MODELS / architecture / "1" / "model.onnx", x_test[3:4]),
        expected[3:4],
        rtol=1e-5,
        atol=1e-5,
    )


def test_digits_clean_accuracy() -> None:
    x_test, y_test = TEST_SPLITS["digits"]
    logits = _onnx_logits(MODELS / "digits" / "1" / "model.onnx", x_test)
    assert np.mean(logits.argmax(axis=1) == y_test) >= 0.9


def test_recalibration_recovers_contrast_shift() -> None:
    """The data-shift demo's premise: a strong shift costs > 40 points, update_bn wins >= 30."""
    module = load_module("digits", MODELS / "digits_torch" / "1" / "model.pt2")
    x_test, y_test = TEST_SPLITS["digits"]
    shifted = corrupt(x_test, "contrast", 5)
    clean = np.mean(_torch_logits(module, x_test).argmax(axis=1) == y_test)
    before = np.mean(_torch_logits(module, shifted).argmax(axis=1) == y_test)
    after = np.mean(_torch_logits(recalibrate_bn(module, shifted), shifted).argmax(1) == y_test)
    assert clean - before > 0.4
    assert after - before >= 0.3


def test_recalibrate_bn_averages_full_batch_statistics() -> None:
    """Independent check of the demo's reference: the first BN layer ends with the equal-weight
    average of the per-batch mean and unbiased variance; the 22-sample tail is dropped."""
    module = load_module("digits", MODELS / "digits_torch" / "1" / "model.pt2")
    x = corrupt(TEST_SPLITS["digits"][0][:150], "blur", 3)
    adapted = recalibrate_bn(module, x)
    with torch.no_grad():
        h = module.get_submodule("conv1")(torch.from_numpy(x)).double()
    batches = (h[:64], h[64:128])
    mean = sum(b.mean((0, 2, 3)) for b in batches) / 2
    var = sum(b.var((0, 2, 3), unbiased=True) for b in batches) / 2
    got_mean = adapted.get_buffer("bn1.running_mean").double()
    np.testing.assert_allclose(got_mean.numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)
    got_var = adapted.get_buffer("bn1.running_var").double()
    np.testing.assert_allclose(got_var.numpy(), var.numpy(), rtol=1e-4, atol=1e-6)
    # A copy was recalibrated; the source keeps its statistics and both stay in eval mode.
    assert not torch.equal(got_mean.float(), module.get_buffer("bn1.running_mean"))
    assert not module.training and not adapted.training


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_is_deterministic_and_changes_data(kind: str) -> None:
    x = load_digits_split()[2][:50]
    original = x.copy()
    mild, strong = corrupt(x, kind, 1), corrupt(x, kind, 5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(strong, corrupt(x, kind, 5))  # type: ignore[arg-type]
    np.testing.assert_array_equal(x, original)
    assert strong.dtype == np.float32 and strong.shape == x.shape
    assert strong.min() >= 0.0 and strong.max() <= 1.0
    assert 0 < np.abs(mild - x).mean() < np.abs(strong - x).mean()


def test_corrupt_blur_preserves_constant_images() -> None:
    flat = np.full((2, 1, 8, 8), 0.25, dtype=np.float32)
    np.testing.assert_allclose(corrupt(flat, "blur", 5), flat, atol=1e-7)


def test_corrupt_rejects_bad_arguments() -> None:
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "blur", 6)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)  # type: ignore[arg-type]


def test_export_onnx_inlines_deduplicated_initializers(tmp_path: Path) -> None:
    """An untrained BN has weight == running_var; the exporter would share them by Identity."""
    torch.manual_seed(0)
    module = DigitsCNN().eval()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    export_onnx(module, x, tmp_path / "model.onnx")
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    initializers = {init.name for init in graph.initializer}
    bn_inputs = [i for n in graph.node if n.op_type == "BatchNormalization" for i in n.input[1:]]
    assert len(bn_inputs) == 12 and set(bn_inputs) <= initializers
    np.testing.assert_allclose(
        _onnx_logits(tmp_path / "model.onnx", x), _torch_logits(module, x), rtol=1e-5, atol=1e-5
    )
