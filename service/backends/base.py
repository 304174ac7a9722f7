"""The interfaces of a model runtime, and the description of a normalization layer.

A ``Family`` is one runtime (ONNX with onnxruntime, ``torch.export``): its model file and what
bnserve does with one, serving (``Backend``), recalibration (``BatchStatsForward``, statistics
writing) and drift taps (``TappedForward``). ``service.backends.families`` finds the family a
config names.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from service.backends.signature import ModelSignature
from service.backends.taps import SampleMoments
from service.stats.moments import LayerStatistics, Moments

Arrays = dict[str, npt.NDArray[np.generic]]
LayerKind = Literal["BatchNorm", "InstanceNorm", "LayerNorm", "GroupNorm"]
Statistics = Mapping[str, LayerStatistics]
"""Layer name -> new ``(running_mean, running_var)``, written unchanged into every format."""


@dataclass(frozen=True)
class NormLayer:
    """A normalization layer as stored in a model file.

    ``running_mean``/``running_var`` are float64 copies of the stored statistics for layers
    that normalize with them (BatchNorm, InstanceNorm with tracked statistics), ``None`` for
    layers that normalize each sample with its own statistics (``batch_independent``).
    ``running_var`` is torch's convention, the unbiased variance, in both backends.
    """

    name: str
    kind: LayerKind
    channels: int
    eps: float
    running_mean: npt.NDArray[np.float64] | None
    running_var: npt.NDArray[np.float64] | None

    @property
    def batch_independent(self) -> bool:
        return self.running_mean is None


class Backend(Protocol):
    """A loaded model version in eval mode.

    ``predict`` is thread-safe for concurrent calls. It runs on the model's thread, or on the
    event loop when its measured cost is far below a thread hand-off (``service.batching``).
    """

    platform: str
    layers: tuple[NormLayer, ...]

    def predict(self, inputs: Arrays) -> Arrays:
        """Eval-mode forward on a batch: every input has the batch as its first axis."""
        ...


class BatchStatsForward(Protocol):
    """A model's recalibration forward, a rewritten copy of its file built once (never the
    serving copy).

    A recalibration pass is the forward that ``torch.optim.swa_utils.update_bn`` sees when only
    the normalization layers are in train mode (as AIMET ``reestimate_bn_stats`` does): each
    selected layer normalizes with the statistics of the current batch, while every other
    layer (unselected normalization layers, Dropout, ...) stays in eval mode.
    """

    layers: tuple[str, ...]
    """The recalibrated layers, in graph order."""

    def batch_moments(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, Moments]:
        """One train-mode forward on a batch (every input has the batch as its first axis).

        Returns, for every layer in ``layers``, the ``Moments`` of the layer's input over the
        batch and spatial positions: ``n = numel / channels``, the mean, ``M2 = n * biased
        variance``. Fed to the estimators of ``service.stats.recalibrate`` batch after batch,
        they reproduce ``update_bn`` (mode ``cumulative``).
        """
        ...


class TappedForward(Protocol):
    """A model file's eval-mode forward with taps on its running-statistics layers.

    ``layers`` are the names of the layers with running statistics (BatchNorm; InstanceNorm
    with tracked statistics), in graph order, named as the serving backend's ``layers``.
    Built from the file, separate from the serving backend, so taps never slow serving.
    """

    layers: tuple[str, ...]

    def sample_moments(self, inputs: Arrays) -> dict[str, SampleMoments]:
        """Eval-mode forward of the whole model on a batch (every input has the batch as its
        first axis); for each of ``layers``, the per-sample moments of the layer's input."""
        ...


class Family(Protocol):
    """One model runtime: its file in a version folder and what bnserve does with such a file.

    Every method takes the path of a model file and raises ``ConfigError`` naming it when it
    is missing, unreadable or invalid. Importing a family imports no runtime (onnxruntime,
    torch): its methods do, on first call, so that a server with only ONNX models never
    imports torch (seconds of start-up and hundreds of MB of memory).
    """

    model_file: str
    """The file's name in a version folder (``model.onnx``)."""
    platform: str
    """The V2 metadata ``platform`` of the models it serves (``onnxruntime_onnx``)."""

    def load(
        self,
        path: Path,
        signature: ModelSignature,
        threads: int = 0,
        spinning: bool | None = None,
    ) -> Backend:
        """The serving backend of the file; ``ConfigError`` naming it when its inputs and
        outputs do not match ``signature``. ``threads`` is the intra-op thread count (0: the
        runtime chooses); ``spinning`` lets intra-op threads busy-wait between runs
        (``None``: chosen by the model's cost), for runtimes that have the choice."""
        ...

    def read_layers(self, path: Path) -> tuple[NormLayer, ...]:
        """The normalization layers stored in the file, as its ``Backend.layers``."""
        ...

    def batch_stats(
        self,
        path: Path,
        layers: Collection[str] | None,
        input_names: Sequence[str],
        threads: int = 0,
    ) -> BatchStatsForward:
        """A fresh recalibration forward of the file for ``layers`` (every layer with running
        statistics when ``None``); ``InvalidInput`` for a name that is not one.
        ``input_names``: the config's input names, in the order of the model's inputs."""
        ...

    def write_statistics(self, source: Path, dest: Path, statistics: Statistics) -> None:
        """Write a copy of ``source`` as ``dest`` with the named layers' running statistics
        replaced; ``InvalidInput`` naming the layer for an unknown name or a wrong channel
        count. Writes only ``dest``."""
        ...

    def taps(self, path: Path, input_names: Sequence[str], threads: int = 0) -> TappedForward:
        """A fresh eval-mode tapped forward of the file (``input_names`` as for
        ``batch_stats``)."""
        ...
