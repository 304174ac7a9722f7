from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecalibrateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RecalibrateHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[RecalibrateHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RecalibrateHeader(_message.Message):
    __slots__ = ("model_name", "model_version", "content_type", "parameters", "source")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    content_type: str
    parameters: RecalibrationParameters
    source: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., content_type: _Optional[str] = ..., parameters: _Optional[_Union[RecalibrationParameters, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class RecalibrationParameters(_message.Message):
    __slots__ = ("mode", "batch_size", "prior", "momentum", "layers", "dry_run", "activate")
    MODE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    batch_size: int
    prior: float
    momentum: float
    layers: str
    dry_run: bool
    activate: bool
    def __init__(self, mode: _Optional[str] = ..., batch_size: _Optional[int] = ..., prior: _Optional[float] = ..., momentum: _Optional[float] = ..., layers: _Optional[str] = ..., dry_run: _Optional[bool] = ..., activate: _Optional[bool] = ...) -> None: ...

class RecalibrateResponse(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...
