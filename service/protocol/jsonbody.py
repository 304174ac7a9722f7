"""Loading a JSON request body and reading its loosely typed parts, with precise errors."""

from typing import Any

import orjson

from service.errors import InvalidInput

JsonObject = dict[str, Any]


def load_object(text: bytes | memoryview, what: str = "request body") -> JsonObject:
    """``text`` parsed as one JSON object (orjson: strict RFC 8259, no NaN literals)."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
    if type(document) is not dict:
        raise InvalidInput(f"{what} must be a JSON object, got {json_type(document)}")
    return document


def parameters(entry: JsonObject, where: str) -> JsonObject:
    """``entry["parameters"]``, an object; ``{}`` when absent."""
    value = entry.get("parameters")
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object, got {json_type(value)}")
    return value


def bool_parameter(params: JsonObject, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if type(value) is not bool:
        raise InvalidInput(f"{where}: parameter '{key}' must be true or false, got {value!r}")
    return value


def json_type(value: object) -> str:
    """How a JSON value's type is named in error messages."""
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }
    return names.get(type(value), "a number")
