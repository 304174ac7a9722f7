"""The interface every backend implements, and the description of a normalization layer."""

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

Arrays = dict[str, npt.NDArray[np.generic]]
LayerKind = Literal["BatchNorm", "InstanceNorm", "LayerNorm", "GroupNorm"]


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

    ``predict`` is thread-safe for concurrent calls; it is never called on the event loop.
    """

    platform: str
    layers: tuple[NormLayer, ...]

    def predict(self, inputs: Arrays) -> Arrays:
        """Eval-mode forward on a batch: every input has the batch as its first axis."""
        ...
