"""Per-layer drift of served traffic against the stored BN statistics.

``DriftMonitor`` (one per served version) taps a sampled share of batches off the request
path into decayed windows (``window``), scores them (``report``) against the no-shift
``baseline``; ``DriftCollector`` exports the scores to Prometheus.
"""

from service.drift.baseline import LayerBaseline, compute_baseline
from service.drift.collector import DriftCollector
from service.drift.monitor import DriftMonitor
from service.drift.window import LayerWindow

__all__ = ["DriftCollector", "DriftMonitor", "LayerBaseline", "LayerWindow", "compute_baseline"]
