"""Train the bundled examples and write them into a model repository (``bnserve build-examples``).

For every architecture two models are written, one per backend: ``<architecture>``
(``model.onnx``) and ``<architecture>_torch`` (``model.pt2``), each as version 1 with
``reference.npy`` (the training inputs, at most 2,048 samples: the no-shift data for drift
baselines) and ``active``. ``digits_adaptive`` is the digits ONNX model again, with the
adaptation loop on (``[adaptation] trigger = "propose"``): corrupted traffic makes it propose a
recalibrated version.
"""

import argparse
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.backends.families import family
from service.config import ModelConfig, load_model_config
from service.examples.data import Float32Array, Split, load_digits_split, load_wine_split
from service.examples.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    export_torch,
    load_module,
)
from service.examples.shift import shift_table
from service.examples.train import TrainSpec, accuracy, predict, train

REFERENCE_SAMPLES = 2048
_EXPORT_EXAMPLE = 8  # samples traced by the exporters; the batch axis stays dynamic
_THREADS = 1  # one thread: fast enough here, and float reductions are then reproducible


@dataclass(frozen=True)
class Example:
    architecture: str
    load: Callable[[], Split]
    classes: int
    spec: TrainSpec
    seed: int = 0


EXAMPLES: tuple[Example, ...] = (
    Example("digits", load_digits_split, 10, TrainSpec(epochs=30)),
    Example("wine", load_wine_split, 3, TrainSpec(epochs=200, batch_size=32)),
    Example("digits_ln", load_digits_split, 10, TrainSpec(epochs=30)),
)
Writer = Callable[[nn.Module, Float32Array, Path], None]
BACKENDS: dict[str, tuple[str, Writer]] = {
    "onnx": ("", export_onnx),
    "torch": ("_torch", export_torch),
}
"""``backend`` (a runtime family) -> the suffix of the model name and its model file writer."""


def config_toml(backend: str, input_shape: tuple[int, ...], classes: int) -> str:
    """The ``config.toml`` of an example model."""
    return (
        f'backend = "{backend}"\n'
        "max_batch_size = 64\n\n"
        "[[inputs]]\n"
        f'name = "{INPUT_NAME}"\n'
        'datatype = "FP32"\n'
        f"shape = [{', '.join(map(str, input_shape))}]\n\n"
        "[[outputs]]\n"
        f'name = "{OUTPUT_NAME}"\n'
        'datatype = "FP32"\n'
        f"shape = [{classes}]\n\n"
        "[recalibration]\n"
        "batch_size = 64\n"
        'mode = "cumulative"\n\n'
        "[drift]\n"
        "half_life = 4096\n"
    )


ADAPTIVE = "digits_adaptive"
ADAPTATION_TOML = (
    "\n[adaptation]\n"
    "capture = 2048  # served samples kept in memory to recalibrate from\n"
    'trigger = "propose"  # write a candidate version; activate it by hand\n'
    "min_samples = 512\n"
)


def write_adaptive(out: Path) -> ModelConfig:
    """``out/digits_adaptive``: a copy of ``out/digits`` with ``[adaptation]`` on; every batch
    is tapped (the model is small) so that a proposal follows about a thousand samples."""
    source, staging = out / "digits", out / f".{ADAPTIVE}.building"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    config = (source / "config.toml").read_text(encoding="utf-8")
    config += "max_overhead = 1.0  # tap every batch\n" + ADAPTATION_TOML
    (staging / "config.toml").write_text(config, encoding="utf-8")
    loaded = load_model_config(staging / "config.toml")
    shutil.rmtree(out / ADAPTIVE, ignore_errors=True)
    staging.rename(out / ADAPTIVE)
    return loaded


def write_model(
    out: Path, name: str, backend: str, module: nn.Module, reference: Float32Array, classes: int
) -> ModelConfig:
    """Write ``out/<name>`` (replacing an earlier build of it) and return its validated config.

    The folder is assembled under a temporary name and renamed into place, so a failed
    export never leaves a half-written model in the repository.
    """
    staging = out / f".{name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    version = staging / "1"
    version.mkdir(parents=True)
    config_path = staging / "config.toml"
    config_path.write_text(config_toml(backend, reference.shape[1:], classes), encoding="utf-8")
    config = load_model_config(config_path)
    example = reference[:_EXPORT_EXAMPLE]
    _, writer = BACKENDS[backend]
    writer(module, example, version / config.model_file)
    np.save(version / "reference.npy", reference, allow_pickle=False)
    (staging / "active").write_text("1\n", encoding="ascii")
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return config


@contextmanager
def _threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_example(out: Path, example: Example, log: Callable[[str], None] = print) -> nn.Module:
    """Train one architecture and write its two models; returns the trained module (eval mode)."""
    x_train, y_train, x_test, y_test = example.load()
    module = train(example.architecture, x_train, y_train, example.spec, example.seed)
    reference = np.ascontiguousarray(x_train[:REFERENCE_SAMPLES])
    for backend, (suffix, _) in BACKENDS.items():
        write_model(out, example.architecture + suffix, backend, module, reference, example.classes)
    log(f"{example.architecture}: test accuracy {accuracy(predict(module, x_test), y_test):.4f}")
    return module


def build_examples(out: Path) -> None:
    """Train every example (seeded, CPU, one thread) and write its models into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with _threads(_THREADS):
        for example in EXAMPLES:
            build_example(out, example)
    write_adaptive(out)


def _print_shift_report(out: Path) -> None:
    model_file = out / "digits_torch" / "1" / family("torch").model_file
    module = load_module("digits", model_file)
    _, _, x_test, y_test = load_digits_split()
    print(f"{model_file} on the corrupted test split: accuracy before -> after update_bn")
    with _threads(_THREADS):
        rows = shift_table(module, x_test, y_test)
    for row in rows:
        print(f"  {row.corruption:>14} s{row.severity}: {row.before:.3f} -> {row.after:.3f}")


def main(argv: list[str] | None = None) -> int:
    """``python -m service.examples [--out DIR] [--shift-report]``."""
    parser = argparse.ArgumentParser(
        prog="bnserve build-examples", description="Train and write the example models."
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    parser.add_argument(
        "--shift-report",
        action="store_true",
        help="then print the digits model's accuracy under each corruption, before and after "
        "BatchNorm recalibration",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    build_examples(args.out)
    elapsed = time.perf_counter() - started
    print(f"wrote {len(EXAMPLES) * len(BACKENDS) + 1} models to {args.out} in {elapsed:.1f} s")
    if args.shift_report:
        _print_shift_report(args.out)
    return 0
