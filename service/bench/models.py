"""The benchmark models: the bundled digits CNN, and a ResNet-18-sized CNN built in code.

The ResNet has torchvision's ``resnet18`` layout (BasicBlock x [2, 2, 2, 2], 11.7 M parameters
at 1000 classes, 20 BatchNorm2d layers) with seeded random weights and non-trivial running
statistics, exported with its BatchNormalization nodes kept, so the service serves,
drift-taps and recalibrates it as it would a trained one. Random weights change no timing.
"""

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.backends.families import family
from service.examples.export import INPUT_NAME, OUTPUT_NAME, export_onnx, load_module

BUNDLED_MODELS = Path(__file__).resolve().parent.parent.parent / "models"
DIGITS = "digits"
RESNET = "resnet18"
RESNET_CLASSES = 1000
RESNET_REFERENCE = 32
"""No-shift reference samples written with the ResNet (drift baselines), as examples have."""


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet18(nn.Module):
    """``(N, 3, H, W)`` images -> ``(N, classes)`` logits; torchvision's module paths."""

    def __init__(self, classes: int = RESNET_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        inplanes = 64
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = nn.Sequential(
                BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1)
            )
            self.add_module(f"layer{index + 1}", blocks)
            inplanes = planes
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(torch.mean(x, dim=(2, 3)), 1))  # type: ignore[no-any-return]


def build_resnet(seed: int = 0) -> ResNet18:
    """A seeded ResNet-18 in eval mode; running statistics drawn near (0, 1), not left at it."""
    torch.manual_seed(seed)
    module = ResNet18()
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                assert sub.running_mean is not None and sub.running_var is not None
                sub.running_mean.normal_(0.0, 0.1)
                sub.running_var.uniform_(0.5, 1.5)
    return module.eval()


def config_toml(
    input_shape: tuple[int, ...],
    classes: int,
    batching: bool = True,
    drift: bool | None = None,
) -> str:
    """A ``config.toml`` for a single-input ONNX classifier (schema: ``service/config.py``).

    ``drift=None`` leaves ``[drift] enabled`` out, so the service default applies.
    """
    drift_line = "" if drift is None else f"enabled = {str(drift).lower()}\n"
    return (
        'backend = "onnx"\n'
        "max_batch_size = 64\n\n"
        f'[[inputs]]\nname = "{INPUT_NAME}"\ndatatype = "FP32"\n'
        f"shape = [{', '.join(map(str, input_shape))}]\n\n"
        f'[[outputs]]\nname = "{OUTPUT_NAME}"\ndatatype = "FP32"\nshape = [{classes}]\n\n'
        f"[batching]\nenabled = {str(batching).lower()}\n\n"
        '[recalibration]\nbatch_size = 64\nmode = "cumulative"\n\n'
        f"[drift]\n{drift_line}half_life = 4096\n"
    )


def export_resnet(module: ResNet18, image_size: int, path: Path) -> None:
    """Write ``module`` as ``path`` (ONNX, BN kept, dynamic batch); checked against torch."""
    example = np.random.default_rng(0).standard_normal((2, 3, image_size, image_size))
    export_onnx(module, example.astype(np.float32), path)


def write_resnet_repository(
    root: Path,
    onnx_file: Path,
    image_size: int,
    batching: bool = True,
    drift: bool | None = None,
) -> Path:
    """``root/resnet18`` (version 1 = a copy of ``onnx_file``, 32 reference samples)."""
    model_dir = root / RESNET
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(onnx_file, model_dir / "1" / family("onnx").model_file)
    shape = (3, image_size, image_size)
    reference = np.random.default_rng(2).standard_normal((RESNET_REFERENCE, *shape))
    np.save(model_dir / "1" / "reference.npy", reference.astype(np.float32), allow_pickle=False)
    (model_dir / "config.toml").write_text(
        config_toml(shape, RESNET_CLASSES, batching, drift), encoding="utf-8"
    )
    (model_dir / "active").write_text("1\n", encoding="ascii")
    return root


def write_digits_repository(
    root: Path, batching: bool = True, drift: bool | None = None, adaptation: str = ""
) -> Path:
    """``root/digits``: the bundled digits model and its reference data, as version 1;
    ``adaptation``, TOML lines, ends the config after ``[drift]``'s (one ``[drift]`` key, then
    an ``[adaptation]`` table)."""
    model_dir = root / DIGITS
    shutil.copytree(BUNDLED_MODELS / DIGITS / "1", model_dir / "1")
    (model_dir / "config.toml").write_text(
        config_toml((1, 8, 8), 10, batching, drift) + adaptation, encoding="utf-8"
    )
    (model_dir / "active").write_text("1\n", encoding="ascii")
    return root


def digits_model_file() -> Path:
    return BUNDLED_MODELS / DIGITS / "1" / family("onnx").model_file


def digits_module() -> nn.Module:
    """The bundled digits model as a torch module (``models/digits_torch``, its torch twin:
    same architecture; weights do not change its timing)."""
    path = BUNDLED_MODELS / f"{DIGITS}_torch" / "1" / family("torch").model_file
    return load_module(DIGITS, path)
