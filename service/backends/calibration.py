"""The checks every family's recalibration forward and statistics writer share: which layers
to recalibrate, and which statistics may be written (``base.BatchStatsForward``,
``base.Family.write_statistics``)."""

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from service.backends.base import Statistics
from service.errors import InvalidInput
from service.stats.moments import LayerStatistics


def recalibrated_layers(
    available: Sequence[str], layers: Collection[str] | None
) -> tuple[str, ...]:
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
    channels: Mapping[str, int], statistics: Statistics
) -> dict[str, LayerStatistics]:
    """``statistics`` as float64 vectors, after checking each layer against ``channels``
    (name -> channel count of the model's recalibratable layers): ``InvalidInput`` naming the
    layer for an unknown name, a wrong length, a non-finite value or a negative variance."""
    recalibrated_layers(list(channels), statistics.keys())
    checked: dict[str, LayerStatistics] = {}
    for name, (mean, var) in statistics.items():
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
