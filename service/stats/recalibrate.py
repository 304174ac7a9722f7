"""BatchNorm statistics estimators, one per recalibration mode, and the per-model accumulator.

Every estimator consumes, batch by batch, the ``Moments`` of one layer's input over one
ghost batch (count ``n_b = batch * positions``, mean, M2; spatial positions count as samples,
as in torch) and returns ``(running_mean, running_var)`` in float64, ``running_var`` being the
*unbiased* variance that torch stores (and that bnserve also writes into ONNX ``input_var``).
The batch's unbiased variance is ``s2_b = M2_b / (n_b - 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol, get_args

import numpy as np

from service.errors import InvalidInput
from service.stats.moments import LayerStatistics, Moments, Vector

RecalibrationMode = Literal["cumulative", "population", "ema"]
MODES: tuple[RecalibrationMode, ...] = get_args(RecalibrationMode)
DEFAULT_MOMENTUM = 0.1  # torch's BatchNorm default


class LayerEstimator(Protocol):
    def update(self, batch: Moments) -> None:
        """Account for one batch of the layer's input."""
        ...

    def result(self) -> LayerStatistics:
        """``(mean, unbiased var)`` after the batches so far, float64 copies."""
        ...


def _batch_var(batch: Moments) -> Vector:
    if batch.n <= 1.0:
        raise InvalidInput(
            f"a batch with {batch.n:g} value(s) per channel has no unbiased variance; "
            "stream at least 2 samples (or use a larger batch_size)"
        )
    return batch.var_unbiased


class CumulativeEstimator:
    """Equal-weight average over batches of the batch mean and the unbiased batch variance::

        mean = (1/T) sum_t mean_t,   var = (1/T) sum_t M2_t / (n_t - 1)

    exactly what ``torch.optim.swa_utils.update_bn`` computes (``momentum=None``, a cumulative
    moving average over ``num_batches_tracked``) and AIMET ``reestimate_bn_stats``; float64
    running sums instead of torch's float32 incremental average.
    """

    def __init__(self, channels: int) -> None:
        self._sum_mean = np.zeros(channels)
        self._sum_var = np.zeros(channels)
        self._batches = 0

    def update(self, batch: Moments) -> None:
        var = _batch_var(batch)
        self._sum_mean += batch.mean
        self._sum_var += var
        self._batches += 1

    def result(self) -> LayerStatistics:
        if self._batches == 0:
            raise InvalidInput("no batches to estimate statistics from")
        return self._sum_mean / self._batches, self._sum_var / self._batches


class PopulationEstimator:
    """Mean and unbiased variance over every value the layer saw, batch-size weighted::

        (n, mean, M2) = Chan merge of all batches,   var = M2 / (n - 1)

    fvcore PreciseBN's ``_PopulationVarianceEstimator`` (which stores the biased M2 / n,
    computed as E[x^2] - E[x]^2 in float32), here exact in float64 and Bessel-corrected like
    every torch ``running_var``.
    """

    def __init__(self, channels: int) -> None:
        self._moments = Moments.empty(channels)

    def update(self, batch: Moments) -> None:
        self._moments = self._moments.merge(batch)

    def result(self) -> LayerStatistics:
        if self._moments.n <= 1.0:
            raise InvalidInput("at least 2 values per channel are needed for a variance")
        return self._moments.mean.copy(), self._moments.var_unbiased


class EmaEstimator:
    """Exponential moving average from the source statistics, torch's train-mode update::

        stat <- (1 - m) * stat + m * batch_stat,   batch_stat = (mean_b, M2_b / (n_b - 1))

    with ``m`` the torch momentum (ONNX momentum is ``1 - m``). With no batch the result is
    the source statistics.
    """

    def __init__(self, source_mean: Vector, source_var: Vector, momentum: float) -> None:
        self._mean = np.array(source_mean, dtype=np.float64)
        self._var = np.array(source_var, dtype=np.float64)
        self._momentum = momentum

    def update(self, batch: Moments) -> None:
        var = _batch_var(batch)
        m = self._momentum
        self._mean = (1.0 - m) * self._mean + m * batch.mean
        self._var = (1.0 - m) * self._var + m * var

    def result(self) -> LayerStatistics:
        return self._mean.copy(), self._var.copy()


def make_estimator(
    mode: str, source_mean: Vector, source_var: Vector, momentum: float | None = None
) -> LayerEstimator:
    """The estimator for ``mode``; ``momentum`` only for ``ema`` (default 0.1, in (0, 1])."""
    if mode not in MODES:
        raise InvalidInput(f"unknown recalibration mode {mode!r}; expected one of {MODES}")
    if mode != "ema":
        if momentum is not None:
            raise InvalidInput(f"momentum applies only to mode 'ema', not {mode!r}")
        channels = len(source_mean)
        return (
            CumulativeEstimator(channels) if mode == "cumulative" else PopulationEstimator(channels)
        )
    m = DEFAULT_MOMENTUM if momentum is None else float(momentum)
    if not 0.0 < m <= 1.0:
        raise InvalidInput(f"momentum must be in (0, 1], got {momentum}")
    return EmaEstimator(source_mean, source_var, m)


def apply_prior(
    source: LayerStatistics, target: LayerStatistics, prior: float, samples: int
) -> LayerStatistics:
    """Mix source and target statistics by sample count (Schneider et al. 2020)::

        stat = N / (N + n) * source + n / (N + n) * target

    with ``N = prior`` (a pseudo sample count, >= 0) and ``n`` the number of samples streamed
    (samples, not spatial positions), for the mean and the variance alike. ``N = 0`` gives the
    target, ``N -> inf`` the source.
    """
    if not prior >= 0.0:
        raise InvalidInput(f"prior must be >= 0, got {prior}")
    if prior == 0.0:
        return target[0].copy(), target[1].copy()
    w = prior / (prior + samples)
    mean = w * source[0] + (1.0 - w) * target[0]
    var = w * source[1] + (1.0 - w) * target[1]
    return mean, var


class Recalibration:
    """One recalibration of a model: an estimator per tracked layer, plus the full-stream
    population ``Moments`` per layer (for the before/after drift report).

    ``sources`` maps each layer to recalibrate (after any ``layers=`` selection) to its current
    ``(running_mean, running_var)``. Memory is O(layers x channels). Not thread-safe.
    """

    def __init__(
        self,
        sources: Mapping[str, LayerStatistics],
        mode: str = "cumulative",
        *,
        momentum: float | None = None,
        prior: float = 0.0,
    ) -> None:
        if mode == "ema" and prior != 0.0:
            raise InvalidInput("prior cannot be combined with mode 'ema'")
        if not prior >= 0.0:
            raise InvalidInput(f"prior must be >= 0, got {prior}")
        self.mode = mode
        self.prior = float(prior)
        self._sources = {
            name: (np.array(mean, dtype=np.float64), np.array(var, dtype=np.float64))
            for name, (mean, var) in sources.items()
        }
        self._estimators = {
            name: make_estimator(mode, mean, var, momentum)
            for name, (mean, var) in self._sources.items()
        }
        self._stream = {name: Moments.empty(len(mean)) for name, (mean, _) in self._sources.items()}
        self.samples = 0
        self.batches = 0

    def update(self, batch_moments: Mapping[str, Moments], samples: int) -> None:
        """Account for one batch of ``samples`` samples, given each layer's input moments over
        it. Layers not being recalibrated are ignored; a missing one is an error. After an
        error the accumulator may be partly updated: discard it (a bad stream writes nothing)."""
        for name, estimator in self._estimators.items():
            batch = batch_moments.get(name)
            if batch is None:
                raise ValueError(f"no batch moments for layer {name!r}")
            if batch.channels != len(self._sources[name][0]):
                raise ValueError(f"layer {name!r}: {batch.channels} channels in batch moments")
            if not (np.isfinite(batch.mean).all() and np.isfinite(batch.m2).all()):
                raise InvalidInput(
                    f"layer {name!r}: non-finite activations in batch {self.batches}"
                )
            try:
                estimator.update(batch)
            except InvalidInput as error:
                raise InvalidInput(f"layer {name!r}: {error}") from error
            self._stream[name] = self._stream[name].merge(batch)
        self.samples += samples
        self.batches += 1

    def result(self) -> dict[str, LayerStatistics]:
        """New ``(running_mean, running_var)`` per layer (float64), the prior applied."""
        if self.batches == 0:
            raise InvalidInput("the stream contained no samples")
        results: dict[str, LayerStatistics] = {}
        for name, estimator in self._estimators.items():
            try:
                target = estimator.result()
            except InvalidInput as error:
                raise InvalidInput(f"layer {name!r}: {error}") from error
            results[name] = apply_prior(self._sources[name], target, self.prior, self.samples)
        return results

    @property
    def stream_moments(self) -> dict[str, Moments]:
        """Population moments of each layer's input over the whole stream so far."""
        return dict(self._stream)
