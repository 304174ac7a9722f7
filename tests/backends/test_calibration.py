"""The recalibration forwards and statistics writers of both backends, against torch itself.

References: ``torch.optim.swa_utils.update_bn`` (or the same loop by hand) on the torch module
with only the selected normalization layers in train mode, torch's own InstanceNorm running
update, and eval forwards of modules with the written buffers loaded.
"""

import copy
import hashlib
import warnings
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper, version_converter
from torch import nn
from torch.optim.swa_utils import update_bn

from service.backends.base import BatchStatsForward
from service.backends.onnx.calibration import onnx_batch_stats
from service.backends.onnx.layers import onnx_layers
from service.backends.onnx.statistics import write_onnx_statistics
from service.backends.torch.calibration import torch_batch_stats
from service.backends.torch.layers import torch_layers
from service.backends.torch.program import load_program
from service.backends.torch.statistics import write_torch_statistics
from service.errors import InvalidInput
from service.stats.moments import Moments
from service.stats.recalibrate import Recalibration
from tests.helpers import MODELS, reference_module, sample_inputs

F32 = npt.NDArray[np.float32]
Stats = dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]
DIGITS_ONNX = MODELS / "digits" / "1" / "model.onnx"
DIGITS_PT2 = MODELS / "digits_torch" / "1" / "model.pt2"
TINY_SHAPE = (3, 6, 6)


class TinyNet(nn.Module):
    """BatchNorm2d and BatchNorm1d with a Dropout before each of the last two layers: active
    dropout would change the BatchNorm1d's input statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2d = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, 6)
        self.bn1d = nn.BatchNorm1d(6, eps=1e-3, affine=False)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn2d(self.conv(x))))
        return self.head(self.bn1d(self.fc(x.flatten(1))))  # type: ignore[no-any-return]


class InstanceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.inn = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv2(torch.relu(self.inn(self.conv(x)))))
        return self.head(x.flatten(1))  # type: ignore[no-any-return]


def trained(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights and running statistics, in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        module.train()
        for _ in range(3):
            module(1.5 * torch.randn(8, *TINY_SHAPE) + 0.3)
    return module.eval()


def export_onnx(module: nn.Module, path: Path, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(
            module.eval(),
            (torch.randn(4, *TINY_SHAPE),),
            str(path),
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def export_pt2(module: nn.Module, path: Path, decompose: bool = False) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        module.eval(), (torch.randn(4, *TINY_SHAPE),), dynamic_shapes=({0: batch},)
    )
    if decompose:  # _native_batch_norm_legit_no_training calls instead of batch_norm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = program.run_decompositions()
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    module = trained(TinyNet(), 0)
    torch.save(module.state_dict(), root / "state.pt")
    return {
        "onnx": export_onnx(module, root / "model.onnx"),
        "onnx13": export_onnx(module, root / "model13.onnx", opset=13),
        "torch": export_pt2(module, root / "model.pt2"),
        "decomposed": export_pt2(module, root / "decomposed.pt2", decompose=True),
        "state": root / "state.pt",
    }


def tiny_module(files: dict[str, Path]) -> nn.Module:
    module = TinyNet()
    module.load_state_dict(torch.load(files["state"]))
    return module.eval()


def tiny_batches(count: int = 3, size: int = 16) -> list[F32]:
    rng = np.random.default_rng(1)
    return [(rng.normal(0.5, 2.0, (size, *TINY_SHAPE))).astype(np.float32) for _ in range(count)]


def digits_batches() -> list[F32]:
    return list(sample_inputs("digits", 3 * 24, seed=3).reshape(3, 24, 1, 8, 8))


def forward_for(kind: str, path: Path, layers: Collection[str] | None = None) -> BatchStatsForward:
    if kind == "torch":  # the program's input is "x": inputs go by position
        return torch_batch_stats(path, layers)
    return onnx_batch_stats(path, layers, portable=kind == "portable")


def cumulative(forward: BatchStatsForward, batches: Sequence[F32]) -> Stats:
    """The service's pipeline: batch moments -> cumulative estimator."""
    moments = [forward.batch_moments({"input": batch}) for batch in batches]
    sources = {name: (np.zeros(m.channels), np.ones(m.channels)) for name, m in moments[0].items()}
    recalibration = Recalibration(sources, "cumulative")
    for batch, batch_moments in zip(batches, moments, strict=True):
        recalibration.update(batch_moments, len(batch))
    return recalibration.result()


class NormsOnlyTrain(nn.Module):
    """``update_bn`` switches the whole model to train mode; through this wrapper only the
    BatchNorms switch (AIMET's semantics: dropout stays in eval)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.eval()

    def train(self, mode: bool = True) -> "NormsOnlyTrain":
        self.training = mode
        for module in self.inner.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)  # type: ignore[no-any-return]


def buffers(module: nn.Module, names: Collection[str]) -> Stats:
    found = dict(module.named_modules())
    return {
        name: (
            found[name].running_mean.double().numpy(),
            found[name].running_var.double().numpy(),
        )
        for name in names
    }


def update_bn_reference(module: nn.Module, batches: Sequence[F32]) -> Stats:
    model = copy.deepcopy(module)
    with torch.no_grad():
        update_bn([torch.from_numpy(batch) for batch in batches], NormsOnlyTrain(model))
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return buffers(model, norms)


def train_mode_reference(
    module: nn.Module, batches: Sequence[F32], selected: Collection[str], momentum: float | None
) -> Stats:
    """The loop by hand, only ``selected`` norm layers in train mode. ``momentum=None`` is a
    cumulative average, done as torch's BatchNorm does it (factor ``1/t``), also for an
    InstanceNorm, whose own ``momentum=None`` means no update at all."""
    model = copy.deepcopy(module).eval()
    norms = {name: m for name, m in model.named_modules() if name in selected}
    for norm in norms.values():
        norm.train()
    with torch.no_grad():
        for t, batch in enumerate(batches, start=1):
            for norm in norms.values():
                norm.momentum = 1.0 / t if momentum is None else momentum
            model(torch.from_numpy(batch))
    return buffers(model, selected)


def assert_stats_close(actual: Stats, expected: Stats, rtol: float) -> None:
    assert list(actual) == list(expected)
    for name, (mean, var) in expected.items():
        # a mean's error in units of the layer's spread: means near 0 have no relative error
        atol = rtol * float(np.sqrt(var.max()))
        np.testing.assert_allclose(actual[name][0], mean, rtol=rtol, atol=atol, err_msg=name)
        np.testing.assert_allclose(actual[name][1], var, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("kind", ["onnx", "portable", "torch"])
def test_digits_cumulative_equals_update_bn(kind: str) -> None:
    forward = forward_for(kind, DIGITS_PT2 if kind == "torch" else DIGITS_ONNX)
    assert forward.layers == ("bn1", "bn2", "fc_bn")
    batches = digits_batches()
    expected = update_bn_reference(reference_module("digits"), batches)
    assert_stats_close(cumulative(forward, batches), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["onnx", "portable", "torch", "decomposed"])
def test_tiny_cumulative_equals_update_bn_with_dropout_in_eval(
    kind: str, tiny: dict[str, Path]
) -> None:
    path = tiny["onnx" if kind == "portable" else kind]
    forward = forward_for("torch" if kind == "decomposed" else kind, path)
    assert forward.layers == ("bn2d", "bn1d")
    batches = tiny_batches()
    expected = update_bn_reference(tiny_module(tiny), batches)
    assert_stats_close(cumulative(forward, batches), expected, rtol=1e-5)
    # update_bn as is (dropout in train mode too) gives other statistics after the dropout
    torch.manual_seed(0)
    plain = copy.deepcopy(tiny_module(tiny))
    with torch.no_grad():
        update_bn([torch.from_numpy(batch) for batch in batches], plain)
    assert not np.allclose(buffers(plain, ["bn1d"])["bn1d"][1], expected["bn1d"][1], rtol=1e-2)
    # dropout in train mode would make the forward random
    again = forward.batch_moments({"input": batches[0]})["bn1d"]
    assert np.array_equal(again.mean, forward.batch_moments({"input": batches[0]})["bn1d"].mean)


def moments_of(forward: BatchStatsForward, batch: F32) -> dict[str, Moments]:
    return forward.batch_moments({"input": batch})


def assert_moments_close(actual: Moments, expected: Moments, rtol: float) -> None:
    assert actual.n == expected.n
    atol = rtol * float(np.sqrt(expected.var_biased.max()))
    np.testing.assert_allclose(actual.mean, expected.mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(actual.var_biased, expected.var_biased, rtol=rtol)


def test_onnx_training_mode_and_portable_forms_agree_at_every_opset(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """Opset 13 (converted for training mode), 17 (ReduceMean axes attribute), 18 (input)."""
    opset18 = tmp_path / "model18.onnx"
    onnx.save(version_converter.convert_version(onnx.load(tiny["onnx"]), 18), opset18)
    batch = tiny_batches(1, 32)[0]
    expected = moments_of(onnx_batch_stats(tiny["onnx"]), batch)
    for path in (tiny["onnx13"], tiny["onnx"], opset18):
        for portable in (False, True):
            found = moments_of(onnx_batch_stats(path, portable=portable), batch)
            for name in ("bn2d", "bn1d"):
                assert_moments_close(found[name], expected[name], rtol=1e-6)
    digits = digits_batches()[0]
    training, portable_form = (onnx_batch_stats(DIGITS_ONNX, portable=p) for p in (False, True))
    for name, moments in moments_of(training, digits).items():
        assert_moments_close(moments_of(portable_form, digits)[name], moments, rtol=1e-6)


def test_onnx_and_torch_forms_of_one_model_agree() -> None:
    batch = digits_batches()[1]
    onnx_moments = moments_of(onnx_batch_stats(DIGITS_ONNX), batch)
    torch_moments = moments_of(torch_batch_stats(DIGITS_PT2, input_names=["input"]), batch)
    assert list(onnx_moments) == list(torch_moments)
    for name, moments in onnx_moments.items():
        assert_moments_close(torch_moments[name], moments, rtol=1e-5)


@pytest.mark.parametrize("kind", ["onnx", "portable", "torch"])
def test_layer_subset_leaves_the_other_batch_norms_in_eval_mode(kind: str) -> None:
    forward = forward_for(kind, DIGITS_PT2 if kind == "torch" else DIGITS_ONNX, ["fc_bn", "bn2"])
    assert forward.layers == ("bn2", "fc_bn")  # graph order
    batches = digits_batches()
    expected = train_mode_reference(reference_module("digits"), batches, ["bn2", "fc_bn"], None)
    assert_stats_close(cumulative(forward, batches), expected, rtol=1e-5)
    # bn1 in train mode would change bn2's input
    everything = update_bn_reference(reference_module("digits"), batches)
    assert not np.allclose(everything["bn2"][0], expected["bn2"][0], rtol=1e-3)


@pytest.mark.parametrize("momentum", [None, 0.1])
def test_instance_norm_with_running_stats_follows_torch_train_mode(
    momentum: float | None, tmp_path: Path
) -> None:
    module = trained(InstanceNet(), 4)
    assert isinstance(module, InstanceNet)
    forward = torch_batch_stats(export_pt2(module, tmp_path / "in.pt2"), input_names=["input"])
    assert forward.layers == ("inn", "bn")
    batches = tiny_batches(3, 8)
    expected = train_mode_reference(module, batches, ["inn", "bn"], momentum)
    found = buffers(module, ["inn", "bn"])
    recalibration = Recalibration(
        found, "cumulative" if momentum is None else "ema", momentum=momentum
    )
    for batch in batches:
        recalibration.update(forward.batch_moments({"input": batch}), len(batch))
    assert_stats_close(recalibration.result(), expected, rtol=1e-5)
    # the encoding, against numpy: n and mean over the batch, and M2 / (n - 1) equal to the
    # average over instances of the instance's unbiased variance
    with torch.no_grad():
        layer_input = module.conv(torch.from_numpy(batches[0])).double().numpy()
    encoded = forward.batch_moments({"input": batches[0]})["inn"]
    assert encoded.n == 8 * 6 * 6
    np.testing.assert_allclose(encoded.mean, layer_input.mean(axis=(0, 2, 3)), rtol=1e-5)
    instance_var = layer_input.reshape(8, 4, -1).var(axis=2, ddof=1).mean(axis=0)
    np.testing.assert_allclose(encoded.var_unbiased, instance_var, rtol=1e-5)


def test_unknown_layer_is_refused_by_forwards_and_writers(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    stats = {"bn2d": (np.zeros(4), np.ones(4)), "nope": (np.zeros(4), np.ones(4))}
    calls: list[Callable[[], object]] = [
        lambda: onnx_batch_stats(tiny["onnx"], ["bn2d", "nope"]),
        lambda: torch_batch_stats(tiny["torch"], ["nope"]),
        lambda: write_onnx_statistics(tiny["onnx"], tmp_path / "a.onnx", stats),
        lambda: write_torch_statistics(tiny["torch"], tmp_path / "a.pt2", stats),
    ]
    for call in calls:
        with pytest.raises(InvalidInput, match="'nope'"):
            call()
    wrong = {"bn1d": (np.zeros(5), np.ones(5))}
    with pytest.raises(InvalidInput, match="'bn1d' has 6 channels"):
        write_onnx_statistics(tiny["onnx"], tmp_path / "b.onnx", wrong)
    with pytest.raises(InvalidInput, match="'bn1d' has 6 channels"):
        write_torch_statistics(tiny["torch"], tmp_path / "b.pt2", wrong)
    assert not list(tmp_path.iterdir())


def test_forwards_refuse_missing_inputs(tiny: dict[str, Path]) -> None:
    batch = {"other": tiny_batches(1)[0]}
    forwards: list[BatchStatsForward] = [
        onnx_batch_stats(tiny["onnx"]),
        torch_batch_stats(tiny["torch"], input_names=["input"]),
        torch_batch_stats(tiny["torch"]),
    ]
    for forward in forwards[:2]:
        with pytest.raises(InvalidInput, match="input"):
            forward.batch_moments(batch)
    with pytest.raises(InvalidInput, match="takes 1 input"):
        forwards[2].batch_moments({**batch, "extra": batch["other"]})


def new_statistics(module: nn.Module, seed: int) -> Stats:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.normal(0, 2, m.num_features), rng.uniform(0.1, 3.0, m.num_features))
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def with_statistics(module: nn.Module, stats: Stats) -> nn.Module:
    module = copy.deepcopy(module)
    state = {
        f"{name}.{buffer}": torch.from_numpy(values).float()
        for name, (mean, var) in stats.items()
        for buffer, values in (("running_mean", mean), ("running_var", var))
    }
    module.load_state_dict(state, strict=False)
    return module.eval()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def eval_forward(module: nn.Module, x: F32) -> F32:
    with torch.no_grad():
        out: F32 = module(torch.from_numpy(x)).numpy()
    return out


def test_onnx_writer_replaces_exactly_the_named_statistics(tmp_path: Path) -> None:
    module = reference_module("digits")
    stats = new_statistics(module, 5)
    del stats["bn2"]  # left as it was
    before = digest(DIGITS_ONNX)
    write_onnx_statistics(DIGITS_ONNX, tmp_path / "model.onnx", stats)
    assert digest(DIGITS_ONNX) == before
    old, new = onnx.load(DIGITS_ONNX), onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(new)
    old_values = {i.name: numpy_helper.to_array(i) for i in old.graph.initializer}
    new_values = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
    assert set(new_values) == set(old_values)
    for name, value in new_values.items():
        layer, _, buffer = name.rpartition(".")
        expected = old_values[name]
        if layer in stats and buffer in ("running_mean", "running_var"):
            expected = stats[layer][buffer == "running_var"].astype(np.float32)
        assert value.dtype == np.float32
        assert np.array_equal(value, expected), name
    layers = {layer.name: layer for layer in onnx_layers(new)}
    for name, (mean, var) in stats.items():
        assert np.array_equal(layers[name].running_mean, mean.astype(np.float32))  # type: ignore[arg-type]
        assert np.array_equal(layers[name].running_var, var.astype(np.float32))  # type: ignore[arg-type]
    x = sample_inputs("digits", 16, seed=6)
    session = ort.InferenceSession(tmp_path / "model.onnx", providers=["CPUExecutionProvider"])
    (served,) = session.run(["logits"], {"input": x})
    expected_out = eval_forward(with_statistics(module, stats), x)
    np.testing.assert_allclose(served, expected_out, rtol=1e-5, atol=1e-5)


def test_torch_writer_saves_a_program_with_the_new_buffers(tmp_path: Path) -> None:
    module = reference_module("digits")
    stats = new_statistics(module, 7)
    del stats["bn1"]
    before = digest(DIGITS_PT2)
    write_torch_statistics(DIGITS_PT2, tmp_path / "model.pt2", stats)
    assert digest(DIGITS_PT2) == before
    old = load_program(DIGITS_PT2).state_dict
    program = load_program(tmp_path / "model.pt2")
    assert set(program.state_dict) == set(old)
    for key, tensor in program.state_dict.items():
        layer, _, buffer = key.rpartition(".")
        expected = old[key]
        if layer in stats and buffer in ("running_mean", "running_var"):
            expected = torch.from_numpy(stats[layer][buffer == "running_var"]).float()
        assert tensor.dtype == old[key].dtype
        assert torch.equal(tensor, expected), key
    layers = {layer.name: layer for layer in torch_layers(program)}
    for name, (mean, var) in stats.items():
        assert np.array_equal(layers[name].running_mean, mean.astype(np.float32))  # type: ignore[arg-type]
        assert np.array_equal(layers[name].running_var, var.astype(np.float32))  # type: ignore[arg-type]
    x = sample_inputs("digits", 16, seed=8)
    with torch.inference_mode():
        served = program.module()(torch.from_numpy(x)).numpy()
    expected_out = eval_forward(with_statistics(module, stats), x)
    np.testing.assert_allclose(served, expected_out, rtol=1e-5, atol=1e-5)


def floats(name: str, values: list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def shared_statistics_graph() -> onnx.ModelProto:
    """Two BatchNorms in a row on (N, 2, 3): ``a.running_mean`` is also read by an Identity
    that produces ``b.running_mean``; ``b.running_var`` comes from a Constant node; both
    read one scale tensor."""
    nodes = [
        helper.make_node("Identity", ["a.running_mean"], ["b.running_mean"]),
        helper.make_node("Constant", [], ["b.running_var"], value=floats("v", [0.5, 2.0])),
        helper.make_node(
            "BatchNormalization",
            ["x", "scale", "bias", "a.running_mean", "a.running_var"],
            ["h"],
            epsilon=1e-5,
        ),
        helper.make_node(
            "BatchNormalization",
            ["h", "scale", "bias", "b.running_mean", "b.running_var"],
            ["y"],
            epsilon=1e-5,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 2, 3])],
        [
            floats("scale", [1.5, 0.5]),
            floats("bias", [0.1, -0.2]),
            floats("a.running_mean", [0.3, -0.4]),
            floats("a.running_var", [1.2, 0.8]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def batch_norm_eval(
    x: npt.NDArray[np.float64], stats: tuple[npt.ArrayLike, npt.ArrayLike]
) -> npt.NDArray[np.float64]:
    mean, var = (np.asarray(v, np.float64)[None, :, None] for v in stats)
    scale, bias = np.array([1.5, 0.5])[None, :, None], np.array([0.1, -0.2])[None, :, None]
    return (x - mean) / np.sqrt(var + 1e-5) * scale + bias  # type: ignore[no-any-return]


@pytest.mark.parametrize("layer", ["a", "b"])
def test_onnx_writer_gives_a_batch_norm_its_own_copy_of_a_shared_statistic(
    layer: str, tmp_path: Path
) -> None:
    onnx.save(shared_statistics_graph(), tmp_path / "src.onnx")
    original: dict[str, tuple[npt.ArrayLike, npt.ArrayLike]] = {
        "a": ([0.3, -0.4], [1.2, 0.8]),
        "b": ([0.3, -0.4], [0.5, 2.0]),
    }
    source = {x.name: x for x in onnx_layers(shared_statistics_graph())}
    for name, (mean, var) in original.items():  # the graph shares what the docstring says
        np.testing.assert_allclose(source[name].running_mean, mean, rtol=1e-7)  # type: ignore[arg-type]
        np.testing.assert_allclose(source[name].running_var, var, rtol=1e-7)  # type: ignore[arg-type]
    new = (np.array([1.0, -1.0]), np.array([2.0, 0.25]))
    write_onnx_statistics(tmp_path / "src.onnx", tmp_path / "out.onnx", {layer: new})
    model = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(model)
    expected = {**original, layer: new}
    # an Identity/Constant left without readers goes; one still read by the other layer stays
    kept = ["Identity", "Constant"] if layer == "a" else []
    assert [node.op_type for node in model.graph.node] == [*kept, *["BatchNormalization"] * 2]
    layers = {x.name: x for x in onnx_layers(model)}
    assert list(layers) == ["a", "b"]  # names kept
    for name, (mean, var) in expected.items():
        np.testing.assert_allclose(layers[name].running_mean, mean, rtol=1e-7)  # type: ignore[arg-type]
        np.testing.assert_allclose(layers[name].running_var, var, rtol=1e-7)  # type: ignore[arg-type]
    x = np.random.default_rng(9).normal(size=(5, 2, 3)).astype(np.float32)
    session = ort.InferenceSession(tmp_path / "out.onnx", providers=["CPUExecutionProvider"])
    (served,) = session.run(["y"], {"x": x})
    reference = batch_norm_eval(batch_norm_eval(x.astype(np.float64), expected["a"]), expected["b"])
    np.testing.assert_allclose(served, reference, rtol=1e-5, atol=1e-5)
