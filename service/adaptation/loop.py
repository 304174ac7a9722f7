"""The closed loop: drift alarm -> candidate from captured traffic -> guardrails -> decision.

Every ``interval`` seconds, for each loaded model whose ``[adaptation] trigger`` is not
``off``: a model under watch is checked first (its activated candidate is rolled back unless
its drift settles); otherwise, outside the cooldown, the serving version's drift window is
read and, when a layer alarms (``alarm.AlarmRule``), the capture restarts, so as to hold only
traffic from after the alarm's onset; once it holds ``2 * min_samples``, a decision starts:

1. the captured reservoir is split into a fit share and a held-out share (fixed seed);
2. *label shift?* the traffic is scored against the reference's classes mixed by the class
   frequencies the serving version predicts on it (``label_shift``): if that explains every
   alarmed layer, the decision is ``rejected`` and nothing is written;
3. the candidate is the usual recalibration (``Recalibrator.run``, same code path, modes and
   exactness as a streamed upload) on the fit share, written with ``activate=false`` and
   provenance ``source = "traffic"`` plus the figures;
4. *holdout fit:* the candidate's drift on the held-out share must be under the alarm
   threshold of its own baseline, or the decision is ``rejected`` (the version stays written,
   never served);
5. ``propose`` stops there (``proposed``). ``activate`` switches ``active`` by compare-and-set
   from the version the candidate came from, so replicas that alarm together activate one
   candidate; a model without reference data or class scores cannot run step 2 and is only
   proposed, saying why.

Heavy work (forwards over the traffic and the reference) runs on one worker thread.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.adaptation.alarm import LayerDrift, layer_drift, rule_of
from service.adaptation.decisions import (
    CandidateDecision,
    Decision,
    ModelAdaptation,
    TrafficRecalibration,
    Watch,
    alarm_figures,
    now,
)
from service.adaptation.evidence import (
    CandidateFigures,
    ReferenceClasses,
    TrafficFigures,
    candidate_figures,
    count,
    reference_classes,
    traffic_figures,
)
from service.adaptation.label_shift import all_explained
from service.adaptation.traffic import Split, once, recalibration_body
from service.adaptation.traffic import split as split_traffic
from service.backends.base import Arrays
from service.config import AdaptationConfig
from service.errors import InvalidInput, ServiceError
from service.metrics import ServiceMetrics
from service.recalibration.params import RecalibrationParams
from service.recalibration.report import RecalibrationOutcome
from service.recalibration.runner import Recalibrator
from service.registry import LoadedModel, ModelRegistry

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class AdaptationLoop:
    """The adaptation loop of one server process; see the module docstring."""

    def __init__(
        self,
        registry: ModelRegistry,
        recalibrator: Recalibrator,
        metrics: ServiceMetrics | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._recalibrator = recalibrator
        self._metrics = metrics
        self._interval = interval
        self._clock = clock
        self._states: dict[str, ModelAdaptation] = {}
        self._references: dict[tuple[str, int], ReferenceClasses | None] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptation")
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def state(self, name: str) -> ModelAdaptation:
        return self._states.setdefault(name, ModelAdaptation())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.poll_once()

    async def poll_once(self) -> None:
        """Check every model once; a decision that starts runs in a task of its own."""
        for name in self._registry.names():
            try:
                model = self._registry.get(name)
            except ServiceError:
                continue
            if model.config.adaptation.trigger == "off" or model.capture is None:
                continue
            state = self.state(name)
            cooling = self._clock() < state.cooldown_until
            if state.busy or (cooling and state.watch is None):  # a watch ends in any case
                continue
            task = asyncio.get_running_loop().create_task(self._check(model, state))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _check(self, model: LoadedModel, state: ModelAdaptation) -> None:
        state.busy = True
        try:
            layers = await asyncio.to_thread(layer_drift, model)
            if layers is None:
                return
            rule = rule_of(model.config.adaptation)
            alarms = rule.alarms(layers)
            state.alarmed = any(alarms.values())
            if state.watch is not None:
                await self._watch(model, state, layers, alarms)
            elif not state.alarmed:
                state.collecting = None
            elif self._collected(model, state):
                decision = await self._decide(model, layers, alarms)
                state.collecting = None
                self._record(model.name, state, decision)
        except Exception:  # a decision that fails must not stop the loop or the server
            log.exception("adaptation of %s failed", model.name)
            state.cooldown_until = self._clock() + model.config.adaptation.cooldown_s
        finally:
            state.busy = False

    @staticmethod
    def _collected(model: LoadedModel, state: ModelAdaptation) -> bool:
        """Whether the capture holds enough traffic from after the alarm to decide on.

        At the alarm's onset the capture restarts: before it, it held a uniform sample of
        everything the version served, mostly the old distribution after a long calm, and a
        candidate fitted on that mix fails on the new traffic. From then on it fills with
        the traffic that rang the alarm; the decision waits for ``2 * min_samples`` of it, a
        fit share and a held-out share."""
        assert model.capture is not None
        if state.collecting != model.version:
            state.collecting = model.version
            model.capture.restart()
            return False
        return model.capture.held >= 2 * model.config.adaptation.min_samples

    def _record(self, name: str, state: ModelAdaptation, decision: Decision) -> None:
        state.decisions.append(decision)
        state.cooldown_until = self._clock() + self._config(name).cooldown_s
        if self._metrics is not None:
            self._metrics.adaptations.labels(name, decision.outcome).inc()
        log.info(
            "adaptation of %s: %s (version %s): %s",
            name,
            decision.outcome,
            decision.version,
            "; ".join(decision.reasons),
        )

    def _config(self, name: str) -> AdaptationConfig:
        return self._registry.get(name).config.adaptation

    async def _watch(
        self,
        model: LoadedModel,
        state: ModelAdaptation,
        layers: list[LayerDrift],
        alarms: Mapping[str, bool],
    ) -> None:
        """Keep an activated candidate once its window holds ``min_samples`` below the alarm;
        roll back to the version it replaced if the alarm still rings then."""
        watch = state.watch
        assert watch is not None
        if model.version != watch.version:  # someone else activated another version
            state.watch = None
            return
        config = model.config.adaptation
        if min((layer.samples for layer in layers), default=0.0) < config.min_samples:
            return
        state.watch = None
        if not any(alarms.values()):
            return
        repository = self._registry.repository
        switched = await asyncio.to_thread(
            repository.compare_and_set_active, model.name, watch.version, watch.previous
        )
        if not switched:
            log.warning("%s: version %d still alarms, but active moved", model.name, watch.version)
            return
        await self._registry.follow(model.name)
        reasons = (
            f"drift against version {watch.version} stayed over the alarm after "
            f"{config.min_samples} samples: back to version {watch.previous}",
        )
        figures = alarm_figures(layers, alarms)
        # As for its activation: the version it came from, then the candidate (rolled back).
        decision = Decision(now(), watch.previous, "rolled_back", watch.version, reasons, figures)
        self._record(model.name, state, decision)

    async def _reference(self, model: LoadedModel, output: str) -> ReferenceClasses | None:
        """The serving version's reference grouped by predicted class, computed once."""
        key = (model.name, model.version)
        if key not in self._references:
            version_dir = self._registry.repository.version_dir(model.name, model.version)
            self._references[key] = await self._in_worker(
                reference_classes, version_dir, model.config, model.backend, output
            )
        return self._references[key]

    async def _in_worker(self, function: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _traffic(
        self, model: LoadedModel, traffic: Arrays
    ) -> tuple[TrafficFigures | None, str | None]:
        """The label-shift figures of ``traffic``, or None and why the test cannot run."""
        output = model.config.class_output
        if output is None:
            return None, "no class scores output: the label-shift test cannot run"
        reference = await self._reference(model, output)
        if reference is None:
            return None, "no reference data: the label-shift test cannot run"
        repository = self._registry.repository
        version_dir = await asyncio.to_thread(repository.version_dir, model.name, model.version)
        figures = await self._in_worker(
            traffic_figures,
            traffic,
            version_dir,
            model.config,
            model.backend,
            output,
            reference,
            model.config.adaptation.label_shift_share,
        )
        return figures, None

    async def _candidate(
        self,
        model: LoadedModel,
        split: Split,
        params: RecalibrationParams,
        provenance: Mapping[str, object],
    ) -> tuple[RecalibrationOutcome, CandidateFigures | None]:
        """Recalibrate on the fit share (the usual job), then judge the version it wrote on the
        held-out share; no figures for a dry run, which writes none."""
        content_type, body = recalibration_body(split.fit)
        outcome = await self._recalibrator.run(model, params, content_type, once(body), provenance)
        if outcome.version is None:
            return outcome, None
        repository = self._registry.repository
        candidate_dir = await asyncio.to_thread(
            repository.version_dir, model.name, int(outcome.version)
        )
        figures = await self._in_worker(
            candidate_figures,
            candidate_dir,
            model.config,
            split.fit,
            split.holdout,
            model.config.class_output,
        )
        return outcome, figures

    async def from_traffic(
        self, model: LoadedModel, params: RecalibrationParams
    ) -> TrafficRecalibration:
        """``POST .../recalibrate?source=traffic``: the candidate an alarm would compute, on
        demand, with the caller's parameters, and its guardrail figures; no decision."""
        if model.capture is None:
            raise InvalidInput(f"model '{model.name}' captures no traffic ([adaptation] capture)")
        traffic = model.capture.samples()
        config = model.config.adaptation
        held = count(traffic)
        if held < 2 * config.min_samples:
            raise InvalidInput(
                f"model '{model.name}' has captured {held} samples; a recalibration from "
                f"traffic needs {2 * config.min_samples} (2 * [adaptation] min_samples)"
            )
        figures_traffic, unavailable = await self._traffic(model, traffic)
        provenance = {"source": "traffic", "adaptation": {"traffic": figures_traffic}}
        split = split_traffic(traffic, config.holdout)
        outcome, figures = await self._candidate(model, split, params, provenance)
        label_shift = None
        if figures_traffic is not None:
            label_shift = all(shift.explained for shift in figures_traffic.label_shift)
        return TrafficRecalibration(outcome, figures_traffic, unavailable, label_shift, figures)

    async def _decide(
        self, model: LoadedModel, layers: list[LayerDrift], alarms: Mapping[str, bool]
    ) -> Decision:
        config = model.config.adaptation
        assert model.capture is not None
        traffic = model.capture.samples()
        figures = alarm_figures(layers, alarms)
        reasons: list[str] = [
            "alarm on " + ", ".join(name for name, alarmed in alarms.items() if alarmed)
        ]
        figures_traffic, unavailable = await self._traffic(model, traffic)
        if unavailable is not None:
            reasons.append(unavailable)
        elif figures_traffic is not None and all_explained(figures_traffic.label_shift, alarms):
            reasons.append(
                "label shift: class frequencies explain the drift of every alarmed layer"
            )
            return Decision(
                now(), model.version, "rejected", None, tuple(reasons), figures, figures_traffic
            )
        provenance = {
            "source": "traffic",
            "adaptation": {"alarm": figures, "traffic": figures_traffic},
        }
        split = split_traffic(traffic, config.holdout)
        params = RecalibrationParams(activate=False)
        outcome, figures_candidate = await self._candidate(model, split, params, provenance)
        assert outcome.version is not None and figures_candidate is not None
        candidate = int(outcome.version)
        decided = CandidateDecision(
            model.version, candidate, figures, figures_traffic, figures_candidate
        )
        if any(ratio >= config.threshold for ratio in figures_candidate.drift_ratio.values()):
            reasons.append(
                "holdout: the candidate's drift on held-out traffic is still over the alarm"
            )
            return decided.decision("rejected", reasons)
        if config.trigger == "propose" or figures_traffic is None:
            if config.trigger == "activate":
                reasons.append("proposed instead of activated: the label-shift test did not run")
            return decided.decision("proposed", reasons)
        repository = self._registry.repository
        switched = await asyncio.to_thread(
            repository.compare_and_set_active, model.name, model.version, candidate
        )
        if not switched:
            reasons.append(f"not activated: active no longer names version {model.version}")
            return decided.decision("proposed", reasons)
        await self._registry.follow(model.name)
        self.state(model.name).watch = Watch(candidate, model.version)
        return decided.decision("activated", reasons)
