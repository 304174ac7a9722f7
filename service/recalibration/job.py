"""One recalibration pass over a streamed body: parse -> ghost batches -> batch statistics.

Synchronous. The work comes in two halves that may run on two threads at once: the parsing
half (``parse`` per received chunk, then ``parse_end``), called from one thread at a time,
returns the completed ghost batches in stream order; the compute half (``compute``), called
from one thread at a time with those batches in the same order, runs the forward and merges
the statistics; ``result`` comes after both. The halves share no state, so they may overlap,
and the statistics do not depend on when each batch runs, only on the order.
Memory is O(one chunk + the ghost batches handed over + layers x channels + the reference
reservoir), whatever the stream length. A job that raised is spent: discard it.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.backends.base import Arrays, BatchStatsForward, NormLayer
from service.config import ModelConfig, RecalibrationConfig
from service.datatypes import to_numpy
from service.errors import InvalidInput
from service.recalibration.params import ema_momentum
from service.stats.drift import DriftScore, drift_score
from service.stats.ghost import GhostBatcher, GhostBatchReport
from service.stats.moments import LayerStatistics
from service.stats.recalibrate import Recalibration
from service.stats.reservoir import Reservoir
from service.streams import make_parser

REFERENCE_SAMPLES = 2048
REFERENCE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class LayerResult:
    layer: NormLayer
    mean: np.ndarray
    var: np.ndarray
    before: DriftScore
    after: DriftScore


@dataclass(frozen=True)
class JobResult:
    layers: tuple[LayerResult, ...]
    batching: GhostBatchReport
    samples: int
    bytes: int
    seconds: float
    reference: Arrays

    @property
    def statistics(self) -> dict[str, LayerStatistics]:
        return {r.layer.name: (r.mean, r.var) for r in self.layers}


class RecalibrationJob:
    def __init__(
        self,
        config: ModelConfig,
        layers: tuple[NormLayer, ...],
        forward: BatchStatsForward,
        settings: RecalibrationConfig,
        content_type: str,
        max_samples: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._layers = layers
        self._forward = forward
        self._parser = make_parser(content_type, config.inputs, max_samples, max_bytes)
        self._batchers = {
            spec.name: GhostBatcher(settings.batch_size, spec.shape, to_numpy(spec.datatype))
            for spec in config.inputs
        }
        sample_bytes = sum(
            spec.sample_size * to_numpy(spec.datatype).itemsize for spec in config.inputs
        )
        capacity = max(1, min(REFERENCE_SAMPLES, REFERENCE_BYTES // sample_bytes))
        self._reservoirs = {
            spec.name: Reservoir(capacity, spec.shape, to_numpy(spec.datatype))
            for spec in config.inputs
        }
        sources = {
            layer.name: (layer.running_mean, layer.running_var)
            for layer in layers
            if layer.running_mean is not None and layer.running_var is not None
        }
        self._recalibration = Recalibration(
            sources, settings.mode, momentum=ema_momentum(settings), prior=settings.prior
        )
        self._started = time.perf_counter()

    def parse(self, chunk: bytes) -> list[Arrays]:
        """The ghost batches that ``chunk`` completes, in stream order."""
        return self._cut(self._parser.feed(chunk))

    def parse_end(self) -> list[Arrays]:
        """End of the body: the last ghost batches, the tail included if it is used."""
        batches = self._cut(self._parser.close())
        tails = {name: batcher.finish() for name, batcher in self._batchers.items()}
        if all(tail is not None for tail in tails.values()):
            batches.append({name: tail for name, tail in tails.items() if tail is not None})
        return batches

    def compute(self, batches: Sequence[Arrays]) -> None:
        """Run ``batches`` through the forward and into the statistics, in order."""
        for batch in batches:
            moments = self._forward.batch_moments(batch)
            self._recalibration.update(moments, len(next(iter(batch.values()))))

    def result(self) -> JobResult:
        """After ``parse_end`` and the ``compute`` of every batch."""
        report = next(iter(self._batchers.values())).report
        if self._recalibration.batches == 0:
            raise InvalidInput("the stream holds no samples")
        return JobResult(
            layers=self._layer_results(),
            batching=report,
            samples=self._parser.samples,
            bytes=self._parser.bytes_read,
            seconds=time.perf_counter() - self._started,
            reference={name: r.samples for name, r in self._reservoirs.items()},
        )

    def _cut(self, arrays: Arrays) -> list[Arrays]:
        if not arrays or len(next(iter(arrays.values()))) == 0:
            return []
        for name, samples in arrays.items():
            self._reservoirs[name].add(samples)
        # Every input gets the same number of samples, so all batchers cut in lockstep.
        parts = [self._batchers[name].push(samples) for name, samples in arrays.items()]
        return [dict(zip(arrays, batch, strict=True)) for batch in zip(*parts, strict=True)]

    def _layer_results(self) -> tuple[LayerResult, ...]:
        new = self._recalibration.result()
        seen = self._recalibration.stream_moments
        results = []
        for layer in self._layers:
            assert layer.running_mean is not None and layer.running_var is not None
            mean, var = new[layer.name]
            observed = seen[layer.name]
            observed_var = observed.var_biased
            before = drift_score(
                observed.mean, observed_var, layer.running_mean, layer.running_var, layer.eps
            )
            after = drift_score(observed.mean, observed_var, mean, var, layer.eps)
            results.append(LayerResult(layer, mean, var, before, after))
        return tuple(results)
