"""Open Inference Protocol (KServe V2) REST inference: decode requests, encode responses.

Request: ``{"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "data" |
parameters.binary_data_size}], "outputs"?: [{"name", "parameters"?: {"binary_data"}}]}``.
``shape`` covers the whole batch (first dimension = batch); ``data`` is row-major, flat or
nested. With the binary tensor data extension, inputs carrying ``binary_data_size`` have
their little-endian bytes after the JSON header, in the order of ``inputs``.

Response: ``{"model_name", "model_version", "id"?, "outputs": [{"name", "datatype",
"shape", "data"}]}`` with flat row-major ``data``; outputs requested as binary carry
``parameters.binary_data_size`` instead of ``data`` and their bytes follow the header.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import orjson

from service.backends.base import Arrays
from service.config import ModelConfig, TensorSpec
from service.datatypes import to_numpy
from service.errors import InvalidInput, PayloadTooLarge
from service.protocol.arrays import array_from_bytes, array_from_json, json_values
from service.protocol.binary import BinarySections, join_body, split_body
from service.protocol.jsonbody import JsonObject, bool_parameter, load_object, parameters


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    """Resolved: the output's ``binary_data`` parameter, else the request's default."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: Arrays
    """Batch-first, shaped, in the config's datatypes. Binary inputs may be read-only views."""
    outputs: tuple[RequestedOutput, ...]
    """In the order requested; empty means every output of the model."""
    binary_output: bool
    """The request's ``parameters.binary_data_output``: the default for unlisted outputs."""
    batch_size: int


class TensorSections(Protocol):
    """Where binary input tensors come from, in input order (``BinarySections`` for HTTP)."""

    def take(self, size: int) -> memoryview: ...


@dataclass(frozen=True)
class _InputPlan:
    """An input whose metadata is validated, before its data is decoded."""

    spec: TensorSpec
    shape: tuple[int, ...]
    data: object
    binary_size: int | None


def decode_infer_request(
    body: bytes, config: ModelConfig, header_length: int | None = None
) -> InferRequest:
    """Validate and decode an inference request for a model with ``config``.

    ``header_length`` is the ``Inference-Header-Content-Length`` header, if sent. Raises
    ``InvalidInput`` naming the offending part, ``PayloadTooLarge`` for a batch over
    ``config.max_batch_size``. Metadata is checked before any tensor data is decoded.
    """
    header, tail = split_body(body, header_length)
    document = load_object(header)
    return decode_infer_document(
        document, config, lambda sizes: BinarySections(tail, sizes, header_length is not None)
    )


def decode_infer_document(
    document: JsonObject, config: ModelConfig, sections: Callable[[list[int]], TensorSections]
) -> InferRequest:
    """``decode_infer_request`` on a request already parsed into ``document``; its binary
    tensors come from ``sections(sizes)``, called once the metadata is valid with the
    ``binary_data_size`` of each binary input in order.

    The gRPC edge builds ``document`` from a ``ModelInferRequest`` (``raw_input_contents``
    as ``binary_data_size`` inputs), so both protocols share these checks and messages.
    """
    request_id = document.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidInput(f"'id' must be a string, got {request_id!r}")
    binary_output = bool_parameter(
        parameters(document, "request"), "binary_data_output", False, "request"
    )
    plans = _plan_inputs(document, config)
    batch_size = _batch_size(plans, config)
    outputs = _requested_outputs(document.get("outputs"), config, binary_output)
    tensors = sections([plan.binary_size for plan in plans if plan.binary_size is not None])
    inputs = {plan.spec.name: _decode_input(plan, tensors) for plan in plans}
    return InferRequest(request_id, inputs, outputs, binary_output, batch_size)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Arrays,
    config: ModelConfig,
) -> tuple[bytes, int | None]:
    """The response body and the ``Inference-Header-Content-Length`` to send with it.

    The length is None when no output is binary (the body is then plain JSON). ``outputs``
    must hold every output the request asks for; each is cast to its config datatype.
    """
    requested = request.outputs or tuple(
        RequestedOutput(spec.name, request.binary_output) for spec in config.outputs
    )
    datatypes = {spec.name: spec.datatype for spec in config.outputs}
    entries: list[JsonObject] = []
    sections: list[memoryview] = []
    for output in requested:
        datatype = datatypes[output.name]
        array = np.ascontiguousarray(outputs[output.name], dtype=to_numpy(datatype))
        entry: JsonObject = {"name": output.name, "datatype": datatype, "shape": [*array.shape]}
        if output.binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            sections.append(array.data)
        else:
            entry["data"] = json_values(array.reshape(-1))
        entries.append(entry)
    document: JsonObject = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = entries
    return join_body(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), sections)


def _plan_inputs(document: JsonObject, config: ModelConfig) -> list[_InputPlan]:
    entries = document.get("inputs")
    if type(entries) is not list:
        raise InvalidInput("'inputs' must be a JSON array of tensors")
    specs = {spec.name: spec for spec in config.inputs}
    plans: dict[str, _InputPlan] = {}
    for index, entry in enumerate(entries):
        if type(entry) is not dict:
            raise InvalidInput(f"inputs[{index}] must be a JSON object")
        name = entry.get("name")
        if type(name) is not str:
            raise InvalidInput(f"inputs[{index}]: 'name' must be a string")
        if name not in specs:
            raise InvalidInput(f"unknown input {name!r}; the model's inputs are {_names(specs)}")
        if name in plans:
            raise InvalidInput(f"input {name!r} is given twice")
        plans[name] = _plan_input(entry, specs[name])
    missing = [name for name in specs if name not in plans]
    if missing:
        raise InvalidInput(f"missing input(s) {_names(missing)}")
    return list(plans.values())


def _plan_input(entry: JsonObject, spec: TensorSpec) -> _InputPlan:
    where = f"input {spec.name!r}"
    datatype = entry.get("datatype")
    if datatype != spec.datatype:
        raise InvalidInput(f"{where}: datatype {datatype!r} is not the model's {spec.datatype}")
    shape = _shape(entry.get("shape"), where)
    if shape[1:] != spec.shape or len(shape) != len(spec.shape) + 1:
        expected = [-1, *spec.shape]
        raise InvalidInput(f"{where}: shape {list(shape)} is not the model's {expected}")
    params = parameters(entry, where)
    if "shared_memory_region" in params:
        raise InvalidInput(f"{where}: shared memory is not supported")
    size, data = params.get("binary_data_size"), entry.get("data")
    if size is None:
        if data is None:
            raise InvalidInput(f"{where}: neither 'data' nor parameters.binary_data_size given")
        return _InputPlan(spec, shape, data, None)
    if data is not None:
        raise InvalidInput(f"{where}: both 'data' and parameters.binary_data_size given")
    if type(size) is not int or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
    needed = math.prod(shape) * to_numpy(spec.datatype).itemsize
    if size != needed:
        raise InvalidInput(
            f"{where}: binary_data_size is {size} bytes but shape {list(shape)} of "
            f"{spec.datatype} needs {needed}"
        )
    return _InputPlan(spec, shape, None, size)


def _shape(value: object, where: str) -> tuple[int, ...]:
    if type(value) is not list or any(type(d) is not int or d < 0 for d in value):
        raise InvalidInput(f"{where}: 'shape' must be an array of non-negative integers")
    return tuple(value)


def _batch_size(plans: list[_InputPlan], config: ModelConfig) -> int:
    first = plans[0]
    batch = first.shape[0]
    for plan in plans[1:]:
        if plan.shape[0] != batch:
            raise InvalidInput(
                f"inputs have different batch sizes: {first.spec.name!r} has {batch}, "
                f"{plan.spec.name!r} has {plan.shape[0]}"
            )
    if batch == 0:
        raise InvalidInput(f"input {first.spec.name!r}: batch size is 0")
    if batch > config.max_batch_size:
        raise PayloadTooLarge(f"batch of {batch} is over max_batch_size {config.max_batch_size}")
    return batch


def _decode_input(plan: _InputPlan, sections: TensorSections) -> npt.NDArray[np.generic]:
    where = f"input {plan.spec.name!r}"
    count = math.prod(plan.shape)
    if plan.binary_size is not None:
        buffer = sections.take(plan.binary_size)
        return array_from_bytes(buffer, plan.spec.datatype, count, where).reshape(plan.shape)
    array = array_from_json(plan.data, plan.spec.datatype, where)
    if array.size != count:
        raise InvalidInput(
            f"{where}: shape {list(plan.shape)} has {count} elements but data has {array.size}"
        )
    return array.reshape(plan.shape)


def _requested_outputs(
    entries: object, config: ModelConfig, binary_output: bool
) -> tuple[RequestedOutput, ...]:
    if entries is None:
        return ()
    if type(entries) is not list:
        raise InvalidInput("'outputs' must be a JSON array")
    known = [spec.name for spec in config.outputs]
    requested: dict[str, RequestedOutput] = {}
    for index, entry in enumerate(entries):
        name = entry.get("name") if type(entry) is dict else None
        if type(name) is not str:
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
        if name not in known:
            raise InvalidInput(f"unknown output {name!r}; the model's outputs are {_names(known)}")
        if name in requested:
            raise InvalidInput(f"output {name!r} is requested twice")
        where = f"output {name!r}"
        params = parameters(entry, where)
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in params:
                raise InvalidInput(f"{where}: parameter '{unsupported}' is not supported")
        binary = bool_parameter(params, "binary_data", binary_output, where)
        requested[name] = RequestedOutput(name, binary)
    return tuple(requested.values())


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)
