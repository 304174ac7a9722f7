"""Eval-mode tapped forwards (ONNX and torch) against forward hooks on the torch modules."""

from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from service.backends.base import TappedForward
from service.backends.onnx.taps import onnx_taps
from service.backends.taps import SampleMoments
from service.backends.torch.taps import torch_taps
from service.config import load_model_config
from service.errors import InvalidInput
from service.registry import load_backend
from tests.helpers import EXAMPLE_MODELS, MODELS, assert_rel_close, reference_module, sample_inputs

Float64 = npt.NDArray[np.float64]
REL = 1e-5


@cache
def bundled_taps(model: str) -> TappedForward:
    folder = MODELS / model / "1"
    if model.endswith("_torch"):
        return torch_taps(folder / "model.pt2")
    return onnx_taps(folder / "model.onnx", threads=1)


def hooked_inputs(module: nn.Module, *inputs: torch.Tensor) -> dict[str, Float64]:
    """The input of every module with running statistics in an eval forward, in float64."""
    seen: dict[str, Float64] = {}
    handles = []

    def keep(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            seen[name] = args[0].detach().to(torch.float64).numpy().copy()

        return hook

    for name, sub in module.named_modules():
        norm = isinstance(
            sub, nn.modules.batchnorm._BatchNorm | nn.modules.instancenorm._InstanceNorm
        )
        if norm and sub.track_running_stats:
            handles.append(sub.register_forward_pre_hook(keep(name)))
    try:
        with torch.no_grad():
            module.eval()(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def per_sample(x: Float64) -> tuple[int, Float64, Float64]:
    """positions, mean (N, C), m2 (N, C) of an (N, C, *spatial) array, by numpy."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    mean = flat.mean(axis=2)
    return flat.shape[2], mean, np.square(flat - mean[..., None]).sum(axis=2)


def assert_matches(got: SampleMoments, x: Float64, rel: float = REL) -> None:
    positions, mean, m2 = per_sample(x)
    assert got.positions == positions
    assert got.mean.shape == mean.shape
    assert_rel_close(got.mean, mean, rel)
    assert_rel_close(got.m2, m2, rel)


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_layers_are_the_backend_running_statistics_layers(model: str) -> None:
    config = load_model_config(MODELS / model / "config.toml")
    backend = load_backend(MODELS / model / "1", config, threads=1)
    expected = tuple(layer.name for layer in backend.layers if not layer.batch_independent)
    assert bundled_taps(model).layers == expected
    assert expected  # every example has BatchNorms


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_sample_moments_equal_eval_hooks(model: str) -> None:
    x = sample_inputs(model, 32, seed=1)
    reference = hooked_inputs(reference_module(model), torch.from_numpy(x))
    got = bundled_taps(model).sample_moments({"input": x})
    assert list(got) == list(reference)
    for name, moments in got.items():
        assert_matches(moments, reference[name])


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_pooled_equals_numpy_over_samples_and_positions(model: str) -> None:
    x = sample_inputs(model, 24, seed=2)
    reference = hooked_inputs(reference_module(model), torch.from_numpy(x))
    for name, moments in bundled_taps(model).sample_moments({"input": x}).items():
        values = reference[name]
        axes = (0, *range(2, values.ndim))
        pooled = moments.pooled()
        assert pooled.n == values.size / values.shape[1]
        assert_rel_close(pooled.mean, values.mean(axis=axes), REL)
        assert_rel_close(pooled.var_biased, values.var(axis=axes), REL)


@pytest.mark.parametrize("architecture", ["digits", "digits_ln", "wine"])
def test_both_formats_of_a_model_agree(architecture: str) -> None:
    x = {"input": sample_inputs(architecture, 32, seed=3)}
    from_onnx = bundled_taps(architecture).sample_moments(x)
    from_torch = bundled_taps(f"{architecture}_torch").sample_moments(x)
    assert list(from_onnx) == list(from_torch)
    for name in from_onnx:
        assert from_onnx[name].positions == from_torch[name].positions
        assert_rel_close(from_onnx[name].mean, from_torch[name].mean, REL)
        assert_rel_close(from_onnx[name].m2, from_torch[name].m2, REL)


@pytest.mark.parametrize("model", ["digits", "digits_torch", "wine_torch"])
def test_a_sample_does_not_depend_on_its_batch(model: str) -> None:
    """Eval mode: stored statistics everywhere, so each row is the forward of one sample."""
    taps = bundled_taps(model)
    x = sample_inputs(model, 16, seed=4)
    batch = taps.sample_moments({"input": x})
    for rows in ([0], [5], [9, 3, 12]):
        alone = taps.sample_moments({"input": x[rows]})
        for name, moments in alone.items():
            expected = batch[name].subset(rows)
            assert_rel_close(moments.mean, expected.mean, REL)
            assert_rel_close(moments.m2, expected.m2, REL)


@pytest.mark.parametrize("model", ["digits", "digits_torch"])
def test_missing_input_is_invalid(model: str) -> None:
    with pytest.raises(InvalidInput):
        bundled_taps(model).sample_moments({})


class TinyNet(nn.Module):
    """BatchNorm1d on (N, C, L), a tracked InstanceNorm2d feeding a BatchNorm2d, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3)
        self.seq_bn = nn.BatchNorm1d(4)
        self.conv2 = nn.Conv2d(1, 5, 3)
        self.inorm = nn.InstanceNorm2d(5, affine=True, track_running_stats=True)
        self.img_bn = nn.BatchNorm2d(5)
        self.dropout = nn.Dropout(0.5)

    def forward(self, seq: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.seq_bn(self.conv(seq))).mean(dim=(1, 2))
        b = self.img_bn(self.dropout(self.inorm(self.conv2(img)))).mean(dim=(1, 2, 3))
        return a + b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nn.Module, Path]]:
    torch.manual_seed(0)
    module = TinyNet().eval()
    with torch.no_grad():  # stored statistics far from the data's: eval vs train is visible
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-1.0, 1.0)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    batch = torch.export.Dim("batch", min=1, max=64)
    example = (torch.randn(4, 3, 10), torch.randn(4, 1, 6, 6))
    program = torch.export.export(module, example, dynamic_shapes=({0: batch}, {0: batch}))
    path = tmp_path_factory.mktemp("tiny") / "model.pt2"
    torch.export.save(program, path)
    yield module, path


def test_tiny_torch_model_with_sequence_batchnorm_and_tracked_instance_norm(
    tiny: tuple[nn.Module, Path],
) -> None:
    module, path = tiny
    taps = torch_taps(path)
    assert taps.layers == ("seq_bn", "inorm", "img_bn")
    generator = torch.Generator().manual_seed(5)
    seq = torch.randn(6, 3, 10, generator=generator) * 2 + 1
    img = torch.randn(6, 1, 6, 6, generator=generator) * 3 - 1
    reference = hooked_inputs(module, seq, img)
    got = taps.sample_moments({"seq": seq.numpy(), "img": img.numpy()})
    for name in taps.layers:
        assert_matches(got[name], reference[name])
    # with the config's names, mapped to the program's positions
    named = torch_taps(path, input_names=["a", "b"])
    again = named.sample_moments({"b": img.numpy(), "a": seq.numpy()})
    for name in taps.layers:
        assert_matches(again[name], reference[name])


def bn_graph(rank: int | None, opset: int, channels: int = 3) -> onnx.ModelProto:
    """x -> BatchNormalization bn1 -> BatchNormalization bn2 -> y, with stored statistics."""
    rng = np.random.default_rng(rank or 0)
    initializers = []
    for layer in ("bn1", "bn2"):
        for suffix, values in (
            ("weight", rng.uniform(0.5, 2.0, channels)),
            ("bias", rng.normal(size=channels)),
            ("running_mean", rng.normal(size=channels)),
            ("running_var", rng.uniform(0.5, 2.0, channels)),
        ):
            name = f"{layer}.{suffix}"
            initializers.append(numpy_helper.from_array(values.astype(np.float32), name))
    nodes = [
        helper.make_node(
            "BatchNormalization",
            [
                source,
                f"{layer}.weight",
                f"{layer}.bias",
                f"{layer}.running_mean",
                f"{layer}.running_var",
            ],
            [target],
            epsilon=1e-3,
        )
        for layer, source, target in (("bn1", "x", "h"), ("bn2", "h", "y"))
    ]
    shape = None if rank is None else ["batch", channels, *([4, 3, 2][: rank - 2])]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def eval_batch_norm(model: onnx.ModelProto, layer: str, x: Float64) -> Float64:
    stored = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    shape = (1, -1, *([1] * (x.ndim - 2)))
    scale, bias, mean, var = (
        stored[f"{layer}.{s}"].reshape(shape)
        for s in ("weight", "bias", "running_mean", "running_var")
    )
    return (x - mean) / np.sqrt(var + 1e-3) * scale + bias


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize(
    ("rank", "sample_shape"), [(2, (3,)), (3, (3, 4)), (5, (3, 4, 3, 2)), (None, (3, 4, 3))]
)
def test_onnx_ranks_opsets_and_unknown_rank(
    tmp_path: Path, rank: int | None, sample_shape: tuple[int, ...], opset: int
) -> None:
    model = bn_graph(rank, opset)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    taps = onnx_taps(path, threads=1)
    assert taps.layers == ("bn1", "bn2")
    x = np.random.default_rng(7).normal(2.0, 3.0, (5, *sample_shape)).astype(np.float32)
    got = taps.sample_moments({"x": x})
    assert_matches(got["bn1"], x.astype(np.float64))
    # bn2 sees bn1's eval-mode output: normalized with the stored statistics
    assert_matches(got["bn2"], eval_batch_norm(model, "bn1", x.astype(np.float64)))


def test_onnx_half_precision_input_is_reduced_in_float32(tmp_path: Path) -> None:
    model = bn_graph(4, 17)
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer).astype(np.float16)
        initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    for info in (*model.graph.input, *model.graph.output):
        info.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, tmp_path / "model.onnx")
    x = np.random.default_rng(8).normal(2.0, 3.0, (5, 3, 4, 3)).astype(np.float16)
    got = onnx_taps(tmp_path / "model.onnx", threads=1).sample_moments({"x": x})
    assert_matches(got["bn1"], x.astype(np.float64))  # float16 sums would be off by ~1e-3


def random_moments(
    samples: int, channels: int, positions: int, seed: int
) -> tuple[SampleMoments, Float64]:
    rng = np.random.default_rng(seed)
    x = rng.normal(rng.normal(size=(samples, channels, 1)) * 5, 2.0, (samples, channels, positions))
    _, mean, m2 = per_sample(x)
    return SampleMoments(positions, mean, m2), x


@settings(max_examples=30, deadline=None)
@given(
    samples=st.integers(1, 12),
    channels=st.integers(1, 4),
    positions=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_pooled_is_the_moments_of_all_values(
    samples: int, channels: int, positions: int, seed: int
) -> None:
    moments, x = random_moments(samples, channels, positions, seed)
    pooled = moments.pooled()
    assert pooled.n == samples * positions
    np.testing.assert_allclose(pooled.mean, x.mean(axis=(0, 2)), rtol=1e-12, atol=1e-12)
    m2 = np.square(x - x.mean(axis=(0, 2), keepdims=True)).sum(axis=(0, 2))
    np.testing.assert_allclose(pooled.m2, m2, rtol=1e-10)


def test_subset_and_concatenate() -> None:
    moments, x = random_moments(6, 3, 4, seed=1)
    rows = [4, 1, 1]  # a bootstrap draw: repeats allowed
    picked = moments.subset(rows)
    assert picked.positions == 4
    np.testing.assert_array_equal(picked.mean, moments.mean[rows])
    np.testing.assert_array_equal(picked.m2, moments.m2[rows])
    np.testing.assert_allclose(picked.pooled().mean, x[rows].mean(axis=(0, 2)), rtol=1e-12)
    mask = np.array([True, False, True, False, False, True])
    np.testing.assert_array_equal(moments.subset(mask).mean, moments.mean[mask])
    np.testing.assert_array_equal(moments.subset(slice(2, 4)).m2, moments.m2[2:4])
    whole = SampleMoments.concatenate([moments.subset(slice(0, 2)), moments.subset(slice(2, 6))])
    np.testing.assert_array_equal(whole.mean, moments.mean)
    np.testing.assert_array_equal(whole.m2, moments.m2)
    assert moments.subset([]).pooled().n == 0.0
    with pytest.raises(ValueError, match="positions or channels"):
        SampleMoments.concatenate([moments, SampleMoments(2, moments.mean, moments.m2)])


def test_sample_moments_are_validated_and_read_only() -> None:
    mean = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        SampleMoments(1, mean, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="positions"):
        SampleMoments(0, mean, mean)
    moments = SampleMoments(1, mean, mean)
    mean[0, 0] = 1.0  # the caller's array is copied
    assert moments.mean[0, 0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        moments.m2[0, 0] = 1.0
