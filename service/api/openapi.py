"""OpenAPI descriptions of the bodies that routes parse themselves (pure JSON Schema dicts).

The data-plane routes read raw bytes with orjson rather than through pydantic models, so
FastAPI cannot infer their request bodies; these dicts are attached with ``openapi_extra``
and ``responses`` instead. They describe the wire format only: ``service.protocol`` stays the
authority on what a given model accepts (its input names, datatypes and shapes).
"""

from typing import Any, Final

from service.datatypes import DTYPES

Schema = dict[str, Any]

DATATYPES: Final[list[str]] = list(DTYPES)
"""The V2 tensor datatypes the service accepts (``BYTES`` is not among them)."""

_SCALAR: Final[Schema] = {"type": ["number", "boolean"]}
_NESTING: Final = 4
"""Array levels below ``data`` itself: enough for a batch of rank-4 samples, written nested."""


def _nested(depth: int) -> Schema:
    """An array of scalars, or of arrays nested ``depth`` more levels (finite on purpose:
    recursive ``$ref``s are poorly supported by client generators and fuzzers)."""
    items = _SCALAR if depth == 0 else {"anyOf": [_SCALAR, _nested(depth - 1)]}
    return {"type": "array", "items": items}


def _parameters(**known: Schema) -> Schema:
    """A V2 ``parameters`` object: free-form, with the keys the service reads described."""
    return {"type": "object", "properties": known, "additionalProperties": True}


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


_STRING: Final[Schema] = {"type": "string"}
_BOOLEAN: Final[Schema] = {"type": "boolean"}
_BINARY: Final[Schema] = {"type": "string", "format": "binary"}
_SHAPE: Final[Schema] = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "description": "The whole tensor's shape, batch dimension first.",
}
TENSOR_DATA: Final[Schema] = _nested(_NESTING) | {
    "description": "Row-major values, flat or nested: numbers, or true/false for BOOL."
}

INFER_REQUEST: Final[Schema] = _object(
    ["inputs"],
    id=_STRING,
    parameters=_parameters(binary_data_output=_BOOLEAN),
    inputs={
        "type": "array",
        "items": _object(
            ["name", "datatype", "shape"],
            name=_STRING,
            datatype={"type": "string", "enum": DATATYPES},
            shape=_SHAPE,
            parameters=_parameters(binary_data_size={"type": "integer", "minimum": 0}),
            data=TENSOR_DATA,
        ),
    },
    outputs={
        "type": "array",
        "items": _object(["name"], name=_STRING, parameters=_parameters(binary_data=_BOOLEAN)),
    },
)
"""The V2 inference request; ``data`` is absent for inputs sent as binary."""

INFER_RESPONSE: Final[Schema] = _object(
    ["model_name", "outputs"],
    model_name=_STRING,
    model_version=_STRING,
    id=_STRING,
    parameters=_parameters(),
    outputs={
        "type": "array",
        "items": _object(
            ["name", "datatype", "shape"],
            name=_STRING,
            datatype={"type": "string", "enum": DATATYPES},
            shape=_SHAPE,
            parameters=_parameters(binary_data_size={"type": "integer", "minimum": 0}),
            data={"type": "array", "items": _SCALAR},
        ),
    },
)
"""The V2 inference response; ``data`` is flat, absent for outputs sent as binary."""

_BINARY_NOTE: Final = (
    " With the binary tensor data extension the body is the JSON header followed by the "
    "tensors' raw little-endian bytes, and `Inference-Header-Content-Length` gives the "
    "header's length."
)

INFER: Final[Schema] = {
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Length in bytes of the JSON header of a binary request body.",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "description": "A V2 inference request." + _BINARY_NOTE,
        "content": _json(INFER_REQUEST) | {"application/octet-stream": {"schema": _BINARY}},
    },
}
"""``openapi_extra`` of the V2 inference routes."""

INFER_RESPONSES: Final[dict[int | str, Schema]] = {
    200: {
        "description": "The outputs." + _BINARY_NOTE,
        "content": _json(INFER_RESPONSE) | {"application/octet-stream": {"schema": _BINARY}},
    }
}

V1_PREDICT: Final[Schema] = {
    "requestBody": {
        "required": True,
        "description": "One entry per sample: its value for a single-input model, else an "
        "object {input name: value}.",
        "content": _json(
            _object(
                ["instances"],
                instances={
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "anyOf": [
                            _SCALAR,
                            TENSOR_DATA,
                            {"type": "object", "additionalProperties": TENSOR_DATA},
                        ]
                    },
                },
            )
        ),
    }
}
"""``openapi_extra`` of ``POST /v1/models/{m}:predict``."""

V1_RESPONSES: Final[dict[int | str, Schema]] = {
    200: {
        "description": "One prediction per instance.",
        "content": _json(_object(["predictions"], predictions={"type": "array"})),
    }
}

REPOSITORY_INDEX: Final[Schema] = {
    "requestBody": {
        "required": False,
        "description": "Optional; ready=true lists only the models that are loaded.",
        "content": _json({"type": "object", "properties": {"ready": _BOOLEAN}}),
    }
}
"""``openapi_extra`` of ``POST /v2/repository/index``."""

INDEX_RESPONSES: Final[dict[int | str, Schema]] = {
    200: {
        "description": "The repository's models.",
        "content": _json(
            {
                "type": "array",
                "items": _object(
                    ["name", "version", "state", "reason"],
                    name=_STRING,
                    version=_STRING,
                    state={"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                    reason=_STRING,
                ),
            }
        ),
    }
}

ERROR: Final[Schema] = _object(["error"], error=_STRING)
"""Every error body, whatever the status (``service.api.errors``)."""

ERROR_RESPONSES: Final[dict[int | str, Schema]] = {
    "4XX": {"description": "The request was refused.", "content": _json(ERROR)},
    "5XX": {"description": "Not ready, overloaded, or timed out.", "content": _json(ERROR)},
}
"""``responses`` of every router; also replaces FastAPI's 422 entry, which this service never
sends (validation errors are 400 ``{"error": ...}``)."""
