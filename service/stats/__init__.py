"""BatchNorm statistics maths: streaming moments, ghost batches, recalibration estimators.

Pure numpy; no model code and no HTTP.
"""

from service.stats.ghost import GhostBatcher, GhostBatchReport
from service.stats.moments import LayerStatistics, Moments, Vector
from service.stats.recalibrate import (
    MODES,
    CumulativeEstimator,
    EmaEstimator,
    LayerEstimator,
    PopulationEstimator,
    Recalibration,
    RecalibrationMode,
    apply_prior,
    make_estimator,
)

__all__ = [
    "MODES",
    "CumulativeEstimator",
    "EmaEstimator",
    "GhostBatchReport",
    "GhostBatcher",
    "LayerEstimator",
    "LayerStatistics",
    "Moments",
    "PopulationEstimator",
    "Recalibration",
    "RecalibrationMode",
    "Vector",
    "apply_prior",
    "make_estimator",
]
