"""Prometheus metrics on an explicit ``CollectorRegistry`` (never the global default one).

Names and labels are part of the interface: dashboards and alerts use them (README
"Metrics"). Labels are only ``model``, ``version``, ``layer``, ``code`` and ``outcome``, and
only for models that exist, so unknown paths and model names never create series. Gauges that
describe current state (queue depth, active version) are read at scrape time by
``StateCollector``.
"""

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.adaptation.decisions import OUTCOMES
from service.config import ModelConfig

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_RECALIBRATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class StateCollector(Collector):
    """``source()`` yields ``(model, serving version, queue depth)`` per loaded model."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "bnserve_queue_depth", "Requests waiting for the model", labels=["model"]
        )
        version = GaugeMetricFamily(
            "bnserve_model_active_version", "The version serving by default", labels=["model"]
        )
        for model, active, queued in self._source():
            depth.add_metric([model], queued)
            version.add_metric([model], active)
        yield depth
        yield version


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._request_children: dict[tuple[str, int | str, str], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "bnserve_requests",
            "Inference requests by outcome and protocol (http or grpc)",
            ["model", "code", "protocol"],
            registry=r,
        )
        self.request_duration = Histogram(
            "bnserve_request_duration_seconds",
            "Inference request latency, body read to response",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "bnserve_inference_batch_size",
            "Samples per model call (after dynamic batching)",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.recalibrations = Counter(
            "bnserve_recalibrations", "Recalibrations by outcome", ["model", "outcome"], registry=r
        )
        self.adaptations = Counter(
            "bnserve_adaptations",
            "Adaptation decisions by outcome (proposed, activated, rejected, rolled_back)",
            ["model", "outcome"],
            registry=r,
        )
        self.recalibration_samples = Counter(
            "bnserve_recalibration_samples",
            "Samples streamed into recalibrations",
            ["model"],
            registry=r,
        )
        self.recalibration_duration = Histogram(
            "bnserve_recalibration_duration_seconds",
            "Recalibration duration, first byte to report",
            ["model"],
            buckets=_RECALIBRATION_BUCKETS,
            registry=r,
        )

    def observe_request(self, model: str, code: int | str, protocol: str, started: float) -> None:
        """Count one request under ``model``, ``code`` (HTTP status or gRPC status name) and
        ``protocol``, and its latency since ``started`` (``time.perf_counter``). The labelled
        children are looked up once per label set, not per request."""
        key = (model, code, protocol)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, str(code), protocol),
                self.request_duration.labels(model),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def model_loaded(self, model: str, config: ModelConfig) -> None:
        """Start a model's adaptation series at 0 when it adapts: a counter series that first
        appears at 1 hides its first decision from ``increase()`` and ``changes()``."""
        if config.adaptation.trigger != "off":
            for outcome in OUTCOMES:
                self.adaptations.labels(model, outcome)
