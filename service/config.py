"""``models/<name>/config.toml``: the per-model configuration, validated at load."""

import math
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.backends.families import FAMILY_NAMES, family
from service.datatypes import DTYPES
from service.errors import ConfigError
from service.stats.recalibrate import RecalibrationMode


def _known_family(value: object) -> object:
    if value not in FAMILY_NAMES:
        *others, last = (repr(name) for name in FAMILY_NAMES)
        expected = f"{', '.join(others)} or {last}" if others else last
        # in the words pydantic uses for a Literal
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )
    return value


FamilyName = Annotated[str, BeforeValidator(_known_family)]
"""The name of a runtime family (``service.backends.families``): ``backend = "onnx"``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: Annotated[str, Field(min_length=1)]
    datatype: str
    shape: tuple[Annotated[int, Field(ge=1)], ...]
    """Without the batch dimension."""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"unsupported datatype {value!r}; one of {', '.join(DTYPES)}")
        return value

    @property
    def sample_size(self) -> int:
        return math.prod(self.shape)


class BatchingConfig(_Strict):
    enabled: bool = True
    """False: every request runs alone (still queued, still off the event loop)."""
    max_delay_ms: Annotated[float, Field(ge=0.0, le=10_000.0)] = 0.0
    max_queue: Annotated[int, Field(ge=1)] = 1024


GhostBatchSize = Annotated[int, Field(ge=2, le=65_536)]
"""Samples per ghost batch: two at least, or a batch has no unbiased variance."""
Momentum = Annotated[float, Field(gt=0.0, le=1.0)]
"""EMA momentum, torch's BatchNorm ``momentum``: the weight of each new batch."""
Prior = Annotated[float, Field(ge=0.0)]
"""Weight of the stored statistics, in samples (``stats.recalibrate.apply_prior``)."""


class RecalibrationConfig(_Strict):
    """``[recalibration]``: the defaults of the recalibrate routes' parameters of the same
    names (``service.recalibration.params.RecalibrationParams``)."""

    batch_size: GhostBatchSize = 64
    mode: RecalibrationMode = "cumulative"
    momentum: Momentum = 0.1
    prior: Prior = 0.0


class DriftConfig(_Strict):
    enabled: bool = True
    half_life: Annotated[float, Field(gt=0.0)] = 4096.0
    """Window decay, in samples: a sample's weight halves after this many newer ones."""
    max_overhead: Annotated[float, Field(gt=0.0)] = 0.03
    """Tap compute as a share of serving compute; >= 1 taps every batch."""


AdaptationTrigger = Literal["off", "propose", "activate"]

_MAX_CAPTURE_BYTES = 1024**3  # one model's captured traffic; more is a configuration error


class AdaptationConfig(_Strict):
    """``[adaptation]``: recalibration from captured traffic when drift alarms. Off by
    default: ``capture = 0`` keeps nothing, ``trigger = "off"`` decides nothing."""

    capture: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """Served samples kept in memory (a uniform reservoir over the current window)."""
    trigger: AdaptationTrigger = "off"
    """``propose``: write a candidate version without serving it; ``activate``: serve it,
    and roll back if drift does not fall."""
    threshold: Annotated[float, Field(gt=1.0)] = 3.0
    """A layer alarms at ``drift / baseline >= threshold`` ..."""
    min_drift: Annotated[float, Field(ge=0.0)] = 0.25
    """... and ``drift >= min_drift`` (used alone without a baseline)."""
    min_samples: Annotated[int, Field(ge=2)] = 512
    """Window samples before any decision."""
    cooldown_s: Annotated[float, Field(ge=0.0)] = 600.0
    """No new decision for this long after one."""
    holdout: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    """Share of the captured samples held out to judge the candidate."""
    label_shift_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """A layer's drift is explained by class frequencies when reweighting leaves at most
    this share of it (``adaptation.label_shift``)."""
    class_output: str | None = None
    """The output holding class scores; optional when the model has one output."""


class ModelConfig(_Strict):
    backend: FamilyName
    max_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig = BatchingConfig()
    recalibration: RecalibrationConfig = RecalibrationConfig()
    drift: DriftConfig = DriftConfig()
    adaptation: AdaptationConfig = AdaptationConfig()

    @model_validator(mode="after")
    def _adaptation_fits(self) -> "ModelConfig":
        adaptation = self.adaptation
        if adaptation.trigger != "off" and adaptation.capture < 2 * adaptation.min_samples:
            raise ValueError(
                f"[adaptation] capture = {adaptation.capture} holds too few samples for "
                f"trigger = {adaptation.trigger!r}: at least 2 * min_samples "
                f"({2 * adaptation.min_samples}), to fit a candidate and hold some out"
            )
        if adaptation.trigger != "off" and not self.drift.enabled:
            raise ValueError("[adaptation] trigger needs [drift] enabled = true: drift alarms")
        per_sample = sum(DTYPES[spec.datatype].itemsize * spec.sample_size for spec in self.inputs)
        if adaptation.capture * per_sample > _MAX_CAPTURE_BYTES:
            raise ValueError(
                f"[adaptation] capture = {adaptation.capture} samples of {per_sample} bytes "
                f"is over {_MAX_CAPTURE_BYTES // 1024**2} MiB"
            )
        names = [spec.name for spec in self.outputs]
        if adaptation.class_output is not None and adaptation.class_output not in names:
            raise ValueError(
                f"[adaptation] class_output {adaptation.class_output!r} is not an output: {names}"
            )
        return self

    @property
    def class_output(self) -> str | None:
        """The output with class scores, when the config names one or has a single output."""
        if self.adaptation.class_output is not None:
            return self.adaptation.class_output
        return self.outputs[0].name if len(self.outputs) == 1 else None

    @model_validator(mode="after")
    def _unique_names(self) -> "ModelConfig":
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not specs:
                raise ValueError(f"at least one entry in [[{kind}]] is required")
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate names in [[{kind}]]: {names}")
        return self

    @property
    def model_file(self) -> str:
        return family(self.backend).model_file

    @property
    def platform(self) -> str:
        return family(self.backend).platform


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(item)
    return ".".join(parts) or "(top level)"


def load_model_config(path: Path) -> ModelConfig:
    """Parse and validate a ``config.toml``; errors name the file and the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"key '{_location(err['loc'])}': {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc
