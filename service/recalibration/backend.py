"""Backend dispatch for recalibration: the batch-statistics forward and the statistics writer."""

from pathlib import Path

from service.backends.calibration import BatchStatsForward, Statistics
from service.config import ModelConfig


def open_forward(
    config: ModelConfig, version_dir: Path, layers: tuple[str, ...], threads: int = 0
) -> BatchStatsForward:
    """A fresh recalibration forward of the model file (never the serving copy)."""
    path = version_dir / config.model_file
    if config.backend == "onnx":
        from service.backends.onnx_calibration import onnx_batch_stats

        return onnx_batch_stats(path, layers, threads=threads)
    from service.backends.torch_calibration import torch_batch_stats

    return torch_batch_stats(path, layers, input_names=[spec.name for spec in config.inputs])


def write_statistics(
    config: ModelConfig, source_dir: Path, dest_dir: Path, stats: Statistics
) -> None:
    """Write a copy of the source model file into ``dest_dir`` with new running statistics."""
    source, dest = source_dir / config.model_file, dest_dir / config.model_file
    if config.backend == "onnx":
        from service.backends.onnx_calibration import write_onnx_statistics

        write_onnx_statistics(source, dest, stats)
    else:
        from service.backends.torch_calibration import write_torch_statistics

        write_torch_statistics(source, dest, stats)
