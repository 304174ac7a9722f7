"""``torch.export`` programs (``model.pt2``) served in eval mode: ``FAMILY``.

``program`` (reading a file, checked by ``archive`` first), ``serving``, ``layers`` (the
normalization layers of the graph), ``graph`` (FX surgery), ``calibration`` (the
batch-statistics forward), ``statistics`` (the writer), ``taps`` (the eval-mode tapped
forward). Only ``FAMILY``'s methods import them, and with them torch.
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
from service.backends.signature import ModelSignature
from service.backends.torch.names import MODEL_FILE, PLATFORM


class TorchFamily:
    """``torch.export`` programs. A program has no input names: inputs go positionally, in
    the order of ``input_names``. Threads are torch's one process-wide pool, and there is no
    spinning to choose."""

    model_file = MODEL_FILE
    platform = PLATFORM

    def load(
        self,
        path: Path,
        signature: ModelSignature,
        threads: int = 0,
        spinning: bool | None = None,
    ) -> Backend:
        import torch

        from service.backends.torch.serving import TorchBackend

        if threads > 0:  # one pool per process; every model gets the service's one setting
            torch.set_num_threads(threads)
        return TorchBackend(path, signature, threads)

    def read_layers(self, path: Path) -> tuple[NormLayer, ...]:
        from service.backends.torch.layers import read_layers

        return read_layers(path)

    def batch_stats(
        self,
        path: Path,
        layers: Collection[str] | None,
        input_names: Sequence[str],
        threads: int = 0,
    ) -> BatchStatsForward:
        from service.backends.torch.calibration import torch_batch_stats

        return torch_batch_stats(path, layers, input_names=input_names)

    def write_statistics(self, source: Path, dest: Path, statistics: Statistics) -> None:
        from service.backends.torch.statistics import write_torch_statistics

        write_torch_statistics(source, dest, statistics)

    def taps(self, path: Path, input_names: Sequence[str], threads: int = 0) -> TappedForward:
        from service.backends.torch.taps import torch_taps

        return torch_taps(path, input_names=input_names)


FAMILY: Family = TorchFamily()
