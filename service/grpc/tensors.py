"""``ModelInferRequest`` / ``ModelInferResponse`` <-> the protocol layer's request and arrays.

A request is rewritten into the V2 JSON document that ``service.protocol.v2`` validates, so
that gRPC and HTTP share every check and every message: an input sent in
``raw_input_contents`` becomes a binary input (``binary_data_size`` = its length), typed
``contents`` become ``data``. ``binary_data``, ``binary_data_size`` and
``binary_data_output`` parameters are HTTP framing and mean nothing here: they are dropped.

Outputs go back the way the inputs came: in ``raw_output_contents`` (what Triton always
sends) unless the request used typed contents, then in typed contents when the output's
datatype has a field (FP16 has none and stays raw).
"""

from collections.abc import Mapping

import numpy as np

from service.backends.base import Arrays
from service.config import ModelConfig
from service.datatypes import DTYPES, to_numpy
from service.errors import InvalidInput
from service.grpc.generated.inference import grpc_service_pb2 as pb
from service.protocol.jsonbody import JsonObject
from service.protocol.v2 import InferRequest, decode_infer_document

CONTENTS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
"""The ``InferTensorContents`` field of each datatype that has one."""

_FRAMING = frozenset({"binary_data", "binary_data_size", "binary_data_output"})


class RawSections:
    """``raw_input_contents``, handed out in input order (``TensorSections`` for gRPC)."""

    def __init__(self, raw: list[bytes]) -> None:
        self._raw = iter(raw)

    def take(self, size: int) -> memoryview:
        return memoryview(next(self._raw))  # sizes were set from these lengths


def decode_request(request: pb.ModelInferRequest, config: ModelConfig) -> InferRequest:
    """Validate and decode ``request`` for a model with ``config`` (``InvalidInput``,
    ``PayloadTooLarge`` with HTTP's messages)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(request.inputs)} inputs: send every input raw, or none"
        )
    document: JsonObject = {
        "parameters": _parameters(request.parameters),
        "inputs": [
            _input(tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs)
        ],
    }
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [
            {"name": output.name, "parameters": _parameters(output.parameters)}
            for output in request.outputs
        ]
    return decode_infer_document(document, config, lambda _: RawSections(raw))


def _input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> JsonObject:
    where = f"input {tensor.name!r}"
    params = _parameters(tensor.parameters)
    entry: JsonObject = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "parameters": params,
    }
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(f"{where}: both contents and raw_input_contents given")
        params["binary_data_size"] = len(raw)
    elif tensor.HasField("contents"):
        entry["data"] = _typed(tensor, where)
    return entry


def _typed(tensor: pb.ModelInferRequest.InferInputTensor, where: str) -> list[object]:
    """The values of ``tensor.contents``, from the one field its datatype reads."""
    given = [field.name for field, _ in tensor.contents.ListFields()]
    expected = CONTENTS.get(tensor.datatype)
    if tensor.datatype not in DTYPES:
        return []  # the protocol layer reports the datatype itself
    if expected is None:
        raise InvalidInput(
            f"{where}: {tensor.datatype} has no typed contents field; send it in raw_input_contents"
        )
    wrong = [name for name in given if name != expected]
    if wrong:
        raise InvalidInput(
            f"{where}: contents.{wrong[0]} given for datatype {tensor.datatype}, which is "
            f"read from contents.{expected}"
        )
    return list(getattr(tensor.contents, expected))


def _parameters(params: Mapping[str, pb.InferParameter]) -> JsonObject:
    """Parameters as JSON values, without HTTP's framing ones."""
    values: JsonObject = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if key not in _FRAMING and choice is not None:
            values[key] = getattr(param, choice)
    return values


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Arrays,
    config: ModelConfig,
    typed: bool,
) -> pb.ModelInferResponse:
    """The response to ``request``; ``typed``: the request sent typed contents."""
    names = [output.name for output in request.outputs] or [s.name for s in config.outputs]
    datatypes = {spec.name: spec.datatype for spec in config.outputs}
    typed = typed and all(datatypes[name] in CONTENTS for name in names)
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    for name in names:
        datatype = datatypes[name]
        array = np.ascontiguousarray(outputs[name], dtype=to_numpy(datatype))
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if typed:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.reshape(-1).tolist())
        else:
            response.raw_output_contents.append(array.tobytes())
    return response
