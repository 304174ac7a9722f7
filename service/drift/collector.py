"""Per-layer drift gauges and the drift error counter for Prometheus, read from the monitors at
scrape time.

A custom collector (prometheus client_python "collector/custom"): every ``collect`` yields
fresh ``GaugeMetricFamily`` values, so unloaded versions vanish and no gauge is ever stale.
Labels are ``model``, ``version`` and ``layer`` only; per-channel detail stays in the JSON.
Null scores (an empty window, no baseline yet, no reference data) are left out, not set to 0.
``bnserve_drift_errors_total{model}`` counts the failures of the serving version's monitor;
a new serving version starts a new monitor, which Prometheus reads as a counter reset.
"""

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.drift.monitor import DriftMonitor
from service.drift.report import LayerDrift


def _baseline_drift(layer: LayerDrift) -> float | None:
    baseline = layer["baseline"]
    return None if baseline is None else baseline.get("drift")


_LABELS = ["model", "version", "layer"]
_GAUGES: tuple[tuple[str, str, Callable[[LayerDrift], float | None]], ...] = (
    # (metric name, help, the value in a layer's entry of the snapshot)
    (
        "bnserve_bn_drift",
        "BN input drift: RMS over channels of W2 / stored std",
        lambda layer: layer["drift"],
    ),
    (
        "bnserve_bn_drift_mean_shift",
        "RMS standardized mean shift of BN inputs",
        lambda layer: layer["mean_shift"],
    ),
    (
        "bnserve_bn_drift_log_var_ratio",
        "RMS log variance ratio of BN inputs",
        lambda layer: layer["log_var_ratio"],
    ),
    (
        "bnserve_bn_drift_window_samples",
        "Decayed sample count of the drift window",
        lambda layer: layer["window_samples"],
    ),
    ("bnserve_bn_drift_baseline", "No-shift drift level at this window size", _baseline_drift),
)
_ERRORS = ("bnserve_drift_errors", "Failed drift taps of the serving version (tapping backs off)")


class DriftCollector(Collector):
    """``source()`` yields ``(model, version, monitor)`` for every monitored loaded version."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, int, DriftMonitor]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        families = [GaugeMetricFamily(name, doc, labels=_LABELS) for name, doc, _ in _GAUGES]
        errors = CounterMetricFamily(*_ERRORS, labels=["model"])
        for model, version, monitor in self._source():
            errors.add_metric([model], monitor.errors)
            for layer in monitor.snapshot(per_channel=False)["layers"]:
                labels = [model, str(version), layer["name"]]
                for family, (_, _, read) in zip(families, _GAUGES, strict=True):
                    value = read(layer)
                    if value is not None:
                        family.add_metric(labels, value)
        yield from families
        yield errors

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so registering never scrapes the monitors."""
        for name, doc, _ in _GAUGES:
            yield GaugeMetricFamily(name, doc, labels=_LABELS)
        yield CounterMetricFamily(*_ERRORS, labels=["model"])
