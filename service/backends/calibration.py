"""The batch-statistics forward that recalibration runs, and the checks shared by the writers.

A recalibration pass is the forward that ``torch.optim.swa_utils.update_bn`` sees when only
the normalization layers are in train mode (as AIMET ``reestimate_bn_stats`` does): each
selected layer normalizes with the statistics of the current batch, while every other layer
(unselected normalization layers, Dropout, ...) stays in eval mode. Both backends implement
it as a rewritten copy of the model file built once (``onnx_calibration``,
``torch_calibration``); neither touches the serving copy.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.errors import InvalidInput
from service.stats.moments import Moments, Vector

Statistics = Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]]
"""Layer name -> new ``(running_mean, running_var)``, ``running_var`` the unbiased variance
(torch's convention, written unchanged into both file formats)."""


class BatchStatsForward(Protocol):
    """A model's recalibration forward; see the module docstring for the semantics."""

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


def select_layers(available: Sequence[str], layers: Collection[str] | None) -> tuple[str, ...]:
    """``layers`` in graph order (all of ``available`` when ``None``); ``InvalidInput``
    naming any layer the model does not have (or whose statistics cannot be recalibrated)."""
    if layers is None:
        return tuple(available)
    unknown = sorted(set(layers) - set(available))
    if unknown:
        raise InvalidInput(
            f"no recalibratable normalization layer named {', '.join(map(repr, unknown))}; "
            f"the model has {list(available)}"
        )
    wanted = set(layers)
    return tuple(name for name in available if name in wanted)


def checked_statistics(
    channels: Mapping[str, int], stats: Statistics
) -> dict[str, tuple[Vector, Vector]]:
    """``stats`` as float64 vectors, after checking each layer against ``channels`` (name ->
    channel count of the model's recalibratable layers): ``InvalidInput`` naming the layer
    for an unknown name, a wrong length, a non-finite value or a negative variance."""
    select_layers(list(channels), stats.keys())
    checked: dict[str, tuple[Vector, Vector]] = {}
    for name, (mean, var) in stats.items():
        mean64 = np.asarray(mean, dtype=np.float64).ravel()
        var64 = np.asarray(var, dtype=np.float64).ravel()
        if mean64.size != channels[name] or var64.size != channels[name]:
            raise InvalidInput(
                f"layer {name!r} has {channels[name]} channels, got statistics of length "
                f"{mean64.size} (mean) and {var64.size} (var)"
            )
        if not (np.isfinite(mean64).all() and np.isfinite(var64).all()) or (var64 < 0).any():
            raise InvalidInput(f"layer {name!r}: statistics must be finite, variances >= 0")
        checked[name] = (mean64, var64)
    return checked
