"""Building the ``DriftMonitor`` of one model version: its tapped forward and reference data."""

import functools
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from service.backends.base import Arrays, NormLayer, TappedForward
from service.backends.families import family
from service.config import ModelConfig
from service.drift.monitor import DriftMonitor


def open_taps(config: ModelConfig, version_dir: Path, threads: int = 0) -> TappedForward:
    """A fresh eval-mode tapped forward of the version's model file (never the serving copy)."""
    path, names = version_dir / config.model_file, [spec.name for spec in config.inputs]
    return family(config.backend).taps(path, names, threads)


def load_reference(config: ModelConfig, version_dir: Path) -> tuple[Arrays | None, str]:
    """The version's no-shift reference samples (``reference.npy``/``.npz``), if it has any."""
    single = version_dir / "reference.npy"
    if single.is_file() and len(config.inputs) == 1:
        return {config.inputs[0].name: np.load(single, allow_pickle=False)}, single.name
    multi = version_dir / "reference.npz"
    if multi.is_file():
        with np.load(multi, allow_pickle=False) as archive:
            if all(spec.name in archive for spec in config.inputs):
                return {spec.name: archive[spec.name] for spec in config.inputs}, multi.name
    return None, ""


def make_monitor(
    config: ModelConfig,
    version_dir: Path,
    layers: tuple[NormLayer, ...],
    executor: Executor,
    threads: int = 0,
) -> DriftMonitor | None:
    """The drift monitor of a version, or ``None`` if drift is off or nothing is monitored."""
    if not config.drift.enabled or all(layer.batch_independent for layer in layers):
        return None
    reference, label = load_reference(config, version_dir)
    return DriftMonitor(
        layers,
        functools.partial(open_taps, config, version_dir, threads),
        executor,
        half_life=config.drift.half_life,
        max_overhead=config.drift.max_overhead,
        reference=reference,
        max_batch_size=config.max_batch_size,
        reference_label=label or "reference.npy",
    )
