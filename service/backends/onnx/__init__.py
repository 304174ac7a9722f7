"""ONNX models (``model.onnx``) served with onnxruntime: ``FAMILY``.

``serving`` (the onnxruntime session), ``layers`` (the normalization layers of the graph),
``graph`` (edits by tensor name), ``calibration`` (the batch-statistics forward),
``statistics`` (the writer), ``taps`` (the eval-mode tapped forward). Only ``FAMILY``'s
methods import them, and with them onnx and onnxruntime.
"""

from collections.abc import Collection, Sequence
from pathlib import Path

from service.backends.base import (
    Backend,
    BatchStatsForward,
    Family,
    NormLayer,
    Statistics,
    TappedForward,
)
from service.backends.onnx.names import MODEL_FILE, PLATFORM
from service.backends.signature import ModelSignature


class OnnxFamily:
    """ONNX files, with onnxruntime's CPU provider. Inputs are fed by name, so
    ``input_names`` is not needed."""

    model_file = MODEL_FILE
    platform = PLATFORM

    def load(
        self,
        path: Path,
        signature: ModelSignature,
        threads: int = 0,
        spinning: bool | None = None,
    ) -> Backend:
        from service.backends.onnx.serving import OnnxBackend

        return OnnxBackend(path, signature, threads, spinning)

    def read_layers(self, path: Path) -> tuple[NormLayer, ...]:
        from service.backends.onnx.layers import read_layers

        return read_layers(path)

    def batch_stats(
        self,
        path: Path,
        layers: Collection[str] | None,
        input_names: Sequence[str],
        threads: int = 0,
    ) -> BatchStatsForward:
        from service.backends.onnx.calibration import onnx_batch_stats

        return onnx_batch_stats(path, layers, threads=threads)

    def write_statistics(self, source: Path, dest: Path, statistics: Statistics) -> None:
        from service.backends.onnx.statistics import write_onnx_statistics

        write_onnx_statistics(source, dest, statistics)

    def taps(self, path: Path, input_names: Sequence[str], threads: int = 0) -> TappedForward:
        from service.backends.onnx.taps import onnx_taps

        return onnx_taps(path, threads)


FAMILY: Family = OnnxFamily()
