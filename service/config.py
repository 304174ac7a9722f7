"""``models/<name>/config.toml``: the per-model configuration, validated at load."""

import math
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.datatypes import DTYPES
from service.errors import ConfigError

Backend = Literal["onnx", "torch"]
RecalibrationMode = Literal["cumulative", "population", "ema"]

MODEL_FILES: dict[str, str] = {"onnx": "model.onnx", "torch": "model.pt2"}
PLATFORMS: dict[str, str] = {"onnx": "onnxruntime_onnx", "torch": "pytorch_export"}


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


class RecalibrationConfig(_Strict):
    batch_size: Annotated[int, Field(ge=2, le=65_536)] = 64
    mode: RecalibrationMode = "cumulative"
    momentum: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    prior: Annotated[float, Field(ge=0.0)] = 0.0


class DriftConfig(_Strict):
    enabled: bool = True
    half_life: Annotated[float, Field(gt=0.0)] = 4096.0
    """Window decay, in samples: a sample's weight halves after this many newer ones."""
    max_overhead: Annotated[float, Field(gt=0.0)] = 0.03
    """Tap compute as a share of serving compute; >= 1 taps every batch."""


class ModelConfig(_Strict):
    backend: Backend
    max_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 64
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig = BatchingConfig()
    recalibration: RecalibrationConfig = RecalibrationConfig()
    drift: DriftConfig = DriftConfig()

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
        return MODEL_FILES[self.backend]

    @property
    def platform(self) -> str:
        return PLATFORMS[self.backend]


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
