"""V2 (JSON, binary tensors) and V1 codecs against tritonclient, hand-written bodies, numpy."""

import json
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.config import ModelConfig
from service.datatypes import DTYPES, to_numpy
from service.errors import InvalidInput, PayloadTooLarge
from service.protocol import (
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    decode_v1_instances,
    encode_infer_response,
    encode_v1_predictions,
)

Specs = list[tuple[str, str, list[int]]]  # (name, datatype, shape without the batch)


def _config(inputs: Specs, outputs: Specs) -> ModelConfig:
    def specs(items: Specs) -> list[dict[str, Any]]:
        return [{"name": n, "datatype": d, "shape": s} for n, d, s in items]

    return ModelConfig.model_validate(
        {
            "backend": "onnx",
            "max_batch_size": 64,
            "inputs": specs(inputs),
            "outputs": specs(outputs),
        }
    )


DIGITS = _config([("input", "FP32", [1, 8, 8])], [("logits", "FP32", [10])])
TWO = _config(
    [("a", "FP32", [3]), ("b", "INT32", [2])], [("sum", "FP32", [1]), ("mask", "BOOL", [3])]
)
FLAGS = _config([("m", "BOOL", [2])], [("y", "FP32", [1])])

Array = npt.NDArray[Any]


def _digits(batch: int) -> Array:
    # Quarter steps are exact in every float type, so JSON text can be compared too.
    return (np.arange(batch * 64).reshape(batch, 1, 8, 8) / 4).astype(np.float32)


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _input(name: str, datatype: str, shape: list[int], data: object) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _triton_body(
    arrays: dict[str, Array], binary: bool, outputs: list[Any] | None = None, request_id: str = ""
) -> tuple[bytes, int | None]:
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), triton.np_to_triton_dtype(array.dtype))
        inputs.append(tensor.set_data_from_numpy(array, binary_data=binary))
    return triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id
    )


def _parse(body: bytes, header_length: int | None) -> Any:
    return triton.InferenceServerClient.parse_response_body(body, header_length=header_length)


# --- requests -------------------------------------------------------------------------------


def test_json_flat_and_nested_data_decode_to_the_same_batch() -> None:
    x = _digits(3)
    for data in (x.ravel().tolist(), x.tolist()):
        body = _json({"inputs": [_input("input", "FP32", [3, 1, 8, 8], data)]})
        request = decode_infer_request(body, DIGITS)
        assert request.batch_size == 3
        assert request.inputs["input"].dtype == np.float32
        np.testing.assert_array_equal(request.inputs["input"], x)
        assert request == InferRequest(None, request.inputs, (), False, 3)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_requests_decode_to_its_arrays(binary: bool) -> None:
    a = np.array([[0.5, -1.25, 3.0], [7.0, 8.5, -9.0]], dtype=np.float32)
    b = np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype=np.int32)
    # Inputs out of config order: binary sections follow the request's order.
    body, header_length = _triton_body({"b": b, "a": a}, binary)
    assert (header_length is not None) == binary
    request = decode_infer_request(body, TWO, header_length)
    assert request.batch_size == 2
    for name, expected in {"a": a, "b": b}.items():
        assert request.inputs[name].dtype == expected.dtype
        np.testing.assert_array_equal(request.inputs[name], expected)


def test_hand_written_binary_request_matches_little_endian_bytes() -> None:
    header = _json(
        {
            "inputs": [
                {
                    "name": "b",
                    "datatype": "INT32",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": 16},
                },
                {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
            ]
        }
    )
    body = header + struct.pack("<4i", 1, -2, 3, -4)
    request = decode_infer_request(body, TWO, len(header))
    np.testing.assert_array_equal(request.inputs["b"], [[1, -2], [3, -4]])
    np.testing.assert_array_equal(request.inputs["a"], [[1, 2, 3], [4, 5, 6]])


def test_aligned_binary_input_is_a_zero_copy_view_and_misaligned_one_is_copied_aligned() -> None:
    x = _digits(2)
    for pad in (0, 1, 2, 3):
        header = _json(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [2, 1, 8, 8],
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        )
        header += b" " * pad
        body = header + x.tobytes()
        decoded = decode_infer_request(body, DIGITS, len(header)).inputs["input"]
        np.testing.assert_array_equal(decoded, x)
        assert decoded.flags.aligned
        view = np.frombuffer(body, dtype=np.uint8)
        aligned = (view.ctypes.data + len(header)) % 4 == 0
        assert np.shares_memory(decoded, view) == aligned


# --- responses ------------------------------------------------------------------------------

SUM = np.array([[1.5], [-2.0]], dtype=np.float32)
MASK = np.array([[True, False, True], [False, False, True]])


def _two_request(outputs: tuple[RequestedOutput, ...], binary_output: bool = False) -> InferRequest:
    return InferRequest("r1", {}, outputs, binary_output, 2)


def test_json_response_is_the_spec_document() -> None:
    request = _two_request(())
    body, header_length = encode_infer_response(
        "two", "3", request, {"sum": SUM.astype(np.float64), "mask": MASK}, TWO
    )
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "two",
        "model_version": "3",
        "id": "r1",
        "outputs": [
            {"name": "sum", "datatype": "FP32", "shape": [2, 1], "data": [1.5, -2.0]},
            {
                "name": "mask",
                "datatype": "BOOL",
                "shape": [2, 3],
                "data": [True, False, True, False, False, True],
            },
        ],
    }


def test_binary_response_is_header_then_tensor_bytes_in_requested_order() -> None:
    request = _two_request((RequestedOutput("mask", True), RequestedOutput("sum", True)))
    body, header_length = encode_infer_response(
        "two", "3", request, {"sum": SUM, "mask": MASK}, TWO
    )
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["mask", "sum"]
    assert [o["parameters"] for o in header["outputs"]] == [
        {"binary_data_size": 6},
        {"binary_data_size": 8},
    ]
    assert all("data" not in o for o in header["outputs"])
    assert body[header_length:] == bytes([1, 0, 1, 0, 0, 1]) + struct.pack("<2f", 1.5, -2.0)


@pytest.mark.parametrize(
    ("outputs", "binary_names"),
    [
        (None, {"sum", "mask"}),  # tritonclient then sends parameters.binary_data_output = true
        ([triton.InferRequestedOutput("mask")], {"mask"}),  # binary_data defaults to True
        ([triton.InferRequestedOutput("mask", binary_data=False)], set()),
        (
            [
                triton.InferRequestedOutput("sum", binary_data=False),
                triton.InferRequestedOutput("mask"),
            ],
            {"mask"},
        ),
    ],
)
def test_tritonclient_parses_the_response_it_asked_for(
    outputs: Any, binary_names: set[str]
) -> None:
    a = np.zeros((2, 3), dtype=np.float32)
    b = np.zeros((2, 2), dtype=np.int32)
    body, header_length = _triton_body({"a": a, "b": b}, True, outputs, request_id="r9")
    request = decode_infer_request(body, TWO, header_length)
    response, json_length = encode_infer_response(
        "two", "1", request, {"sum": SUM, "mask": MASK}, TWO
    )
    result = _parse(response, json_length)
    returned = [o["name"] for o in result.get_response()["outputs"]]
    assert returned == ([o.name() for o in outputs] if outputs else ["sum", "mask"])
    assert result.get_response()["id"] == "r9"
    assert {
        o["name"] for o in result.get_response()["outputs"] if "parameters" in o
    } == binary_names
    assert (json_length is None) == (not binary_names)
    for name, expected in {"sum": SUM, "mask": MASK}.items():
        if name in returned:
            np.testing.assert_array_equal(result.as_numpy(name), expected)


def test_output_binary_data_overrides_the_request_default() -> None:
    for parameters, binary in (({}, True), ({"binary_data": False}, False)):
        body = _top(
            parameters={"binary_data_output": True},
            outputs=[{"name": "logits", "parameters": parameters}],
        )
        request = decode_infer_request(body, DIGITS)
        assert request.binary_output
        assert request.outputs == (RequestedOutput("logits", binary),)


def test_id_is_echoed_only_when_sent() -> None:
    for document, expected in (({}, None), ({"id": ""}, ""), ({"id": "abc"}, "abc")):
        body = _json({**document, "inputs": [_input("input", "FP32", [1, 1, 8, 8], [0] * 64)]})
        request = decode_infer_request(body, DIGITS)
        assert request.id == expected
        response, _ = encode_infer_response(
            "d", "1", request, {"logits": np.zeros((1, 10))}, DIGITS
        )
        assert json.loads(response).get("id") == expected


# --- V1 -------------------------------------------------------------------------------------


def test_v1_instances_nested_flat_or_named_decode_to_the_batch() -> None:
    x = _digits(2)
    for instances in (x.tolist(), x.reshape(2, 64).tolist(), [{"input": s} for s in x.tolist()]):
        decoded = decode_v1_instances(_json({"instances": instances}), DIGITS)
        np.testing.assert_array_equal(decoded["input"], x)
    instances = [{"a": [1, 2, 3], "b": [4, 5]}, {"b": [6, 7], "a": [8.5, 9, 0]}]
    decoded = decode_v1_instances(_json({"instances": instances}), TWO)
    np.testing.assert_array_equal(decoded["a"], np.array([[1, 2, 3], [8.5, 9, 0]], np.float32))
    np.testing.assert_array_equal(decoded["b"], np.array([[4, 5], [6, 7]], np.int32))
    assert decoded["b"].dtype == np.int32


def test_v1_predictions_one_entry_per_sample() -> None:
    logits = np.arange(20, dtype=np.float32).reshape(2, 10) / 8
    assert json.loads(encode_v1_predictions({"logits": logits}, DIGITS)) == {
        "predictions": logits.tolist()
    }
    predictions = json.loads(encode_v1_predictions({"sum": SUM, "mask": MASK}, TWO))["predictions"]
    assert predictions == [
        {"sum": [1.5], "mask": [True, False, True]},
        {"sum": [-2.0], "mask": [False, False, True]},
    ]


# --- validation -----------------------------------------------------------------------------

Body = bytes | tuple[bytes, int]  # a tuple carries the Inference-Header-Content-Length


def _d(*extra: dict[str, Any], **changes: Any) -> bytes:
    """A digits request whose input has ``changes``, followed by ``extra`` inputs."""
    return _json({"inputs": [_input("input", "FP32", [1, 1, 8, 8], [0.0] * 64) | changes, *extra]})


def _top(**top: Any) -> bytes:
    """A valid digits request with top-level keys ``top``."""
    return _json({"inputs": [_input("input", "FP32", [1, 1, 8, 8], [0.0] * 64)], **top})


def _b(size: object, payload: bytes, **changes: Any) -> tuple[bytes, int]:
    """A digits request whose input declares ``binary_data_size`` ``size``, then ``payload``."""
    spec = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8]}
    header = _json({"inputs": [spec | {"parameters": {"binary_data_size": size}} | changes]})
    return header + payload, len(header)


def _two(a: dict[str, Any], b: dict[str, Any]) -> bytes:
    a = _input("a", "FP32", [1, 3], [0, 0, 0]) | a
    return _json({"inputs": [a, _input("b", "INT32", [1, 2], [0, 0]) | b]})


def _m(data: list[int], binary: bool = False) -> Body:
    """A request for the BOOL model: ``data`` as JSON, or as binary bytes."""
    if not binary:
        return _json({"inputs": [_input("m", "BOOL", [1, 2], data)]})
    spec = {"name": "m", "datatype": "BOOL", "shape": [1, 2], "parameters": {"binary_data_size": 2}}
    header = _json({"inputs": [spec]})
    return header + bytes(data), len(header)


_SHAPE = "input 'input': 'shape' must be an array of non-negative integers"
_NAN = np.full(64, np.nan, dtype=np.float32).tobytes()
DIGITS_ERRORS: dict[str, Body] = {
    "request body is not valid JSON": b"{not json",
    "request body must be a JSON object, got an array": b"[1, 2]",
    "'inputs' must be a JSON array": b"{}",
    "'inputs' must be a JSON array ": _json({"inputs": {"input": [0]}}),
    "inputs[0] must be a JSON object": _json({"inputs": [1]}),
    "inputs[0]: 'name' must be a string": _json({"inputs": [{"shape": [1]}]}),
    "unknown input 'image'; the model's inputs are 'input'": _d(name="image"),
    "input 'input' is given twice": _d(_input("input", "FP32", [1, 1, 8, 8], [0] * 64)),
    "input 'input': datatype 'FP64' is not the model's FP32": _d(datatype="FP64"),
    "input 'input': datatype None is not the model's FP32": _d(datatype=None),
    _SHAPE: _d(shape="1x64"),
    _SHAPE + " ": _d(shape=[-1, 1, 8, 8]),
    _SHAPE + "  ": _d(shape=[1.0, 1, 8, 8]),
    _SHAPE + "   ": _d(shape=[True, 1, 8, 8]),
    "input 'input': shape [1, 64] is not the model's [-1, 1, 8, 8]": _d(shape=[1, 64]),
    "input 'input': shape [1, 1, 8, 9] is not the model's [-1, 1, 8, 8]": _d(shape=[1, 1, 8, 9]),
    "input 'input': shape [2, 1, 8, 8] has 128 elements but data has 127": _d(
        shape=[2, 1, 8, 8], data=[0.5] * 127
    ),
    "input 'input': 'data' is ragged": _d(data=[[0.5] * 32, [0.5] * 31]),
    "input 'input': 'data' for FP32 must hold numbers, got strings": _d(data=["a"] * 64),
    "input 'input': 'data' for FP32 must hold numbers, got strings ": _d(data=["1.5"] * 64),
    "input 'input': 'data' for FP32 must hold numbers, got null": _d(data=[None] * 64),
    "input 'input': 'data' for FP32 must hold numbers, got true/false": _d(data=[True] * 64),
    "got null, objects or mixed types": _d(data=[{}] + [0] * 63),
    "input 'input': 'data' must be a JSON array, got a number": _d(data=3),
    "input 'input': data holds NaN or infinite values": _d(data=[1e39] + [0] * 63),
    "input 'input': data holds NaN or infinite values ": _b(256, _NAN),
    "input 'input': batch size is 0": _d(shape=[0, 1, 8, 8], data=[]),
    "input 'input': binary_data_size is 255 bytes but shape [1, 1, 8, 8] of FP32 needs 256": _b(
        255, bytes(255)
    ),
    "is 255 bytes but the inputs' binary_data_size add up to 256": _b(256, bytes(255)),
    "is 257 bytes but the inputs' binary_data_size add up to 256": _b(256, bytes(257)),
    "is 0 bytes but the inputs' binary_data_size add up to 256 (Inference-Header-Content-Length": (
        _b(256, b"")[0]
    ),
    "Inference-Header-Content-Length 10000 is larger than the body": (_top(), 10_000),
    "Inference-Header-Content-Length -1 is negative": (_top(), -1),
    "input 'input': both 'data' and parameters.binary_data_size given": _b(
        256, bytes(256), data=[0.0] * 64
    ),
    "input 'input': neither 'data' nor parameters.binary_data_size given": _d(data=None),
    "input 'input': binary_data_size must be a non-negative integer": _b("256", bytes(256)),
    "input 'input': shared memory is not supported": _d(parameters={"shared_memory_region": "r"}),
    "input 'input': 'parameters' must be a JSON object, got a string": _d(parameters="x"),
    "unknown output 'probs'; the model's outputs are 'logits'": _top(outputs=[{"name": "probs"}]),
    "output 'logits' is requested twice": _top(outputs=[{"name": "logits"}] * 2),
    "'outputs' must be a JSON array": _top(outputs={"name": "logits"}),
    "outputs[0] must be an object with a string 'name'": _top(outputs=["logits"]),
    "output 'logits': parameter 'binary_data' must be true or false, got 'yes'": _top(
        outputs=[{"name": "logits", "parameters": {"binary_data": "yes"}}]
    ),
    "output 'logits': parameter 'classification' is not supported": _top(
        outputs=[{"name": "logits", "parameters": {"classification": 3}}]
    ),
    "output 'logits': 'parameters' must be a JSON object, got a number": _top(
        outputs=[{"name": "logits", "parameters": 1}]
    ),
    "request: 'parameters' must be a JSON object, got an array": _top(parameters=[1]),
    "request: parameter 'binary_data_output' must be true or false, got 1": _top(
        parameters={"binary_data_output": 1}
    ),
    "'id' must be a string, got 5": _top(id=5),
}
OTHER_ERRORS: dict[str, tuple[ModelConfig, Body]] = {
    "missing input(s) 'b'": (TWO, _json({"inputs": [_input("a", "FP32", [1, 3], [0, 0, 0])]})),
    "input 'b': 'data' for INT32 must hold integers, got floats": (
        TWO,
        _two({}, {"data": [1.5, 2]}),
    ),
    "input 'b': value 2147483648 is out of range for INT32": (TWO, _two({}, {"data": [2**31, 0]})),
    "input 'b': value -2147483649 is out of range for INT32": (
        TWO,
        _two({}, {"data": [-(2**31) - 1, 0]}),
    ),
    "inputs have different batch sizes: 'a' has 2, 'b' has 3": (
        TWO,
        _two({"shape": [2, 3], "data": [0] * 6}, {"shape": [3, 2], "data": [0] * 6}),
    ),
    "input 'm': 'data' for BOOL must hold true/false, got integers": (FLAGS, _m([0, 1])),
    "input 'm': BOOL binary data must be bytes 0 or 1": (FLAGS, _m([1, 2], binary=True)),
}
V2_ERRORS = [(DIGITS, body, m) for m, body in DIGITS_ERRORS.items()] + [
    (config, body, m) for m, (config, body) in OTHER_ERRORS.items()
]


@pytest.mark.parametrize(("config", "body", "message"), V2_ERRORS, ids=[m for *_, m in V2_ERRORS])
def test_invalid_v2_requests_say_what_and_where(
    config: ModelConfig, body: Body, message: str
) -> None:
    content, header_length = body if isinstance(body, tuple) else (body, None)
    with pytest.raises(InvalidInput) as caught:
        decode_infer_request(content, config, header_length)
    assert message.strip() in str(caught.value)


def test_batch_over_max_batch_size_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match="batch of 65 is over max_batch_size 64"):
        decode_infer_request(_d(shape=[65, 1, 8, 8], data=[0] * (65 * 64)), DIGITS)
    full = decode_infer_request(_d(shape=[64, 1, 8, 8], data=[0] * (64 * 64)), DIGITS)
    assert full.batch_size == 64
    with pytest.raises(PayloadTooLarge, match="batch of 65 is over max_batch_size 64"):
        decode_v1_instances(_json({"instances": [[0] * 64] * 65}), DIGITS)


def _v1(instances: object) -> bytes:
    return _json({"instances": instances})


V1_ERRORS: dict[str, tuple[ModelConfig, bytes]] = {
    "request body must be a JSON object, got an array": (DIGITS, b"[]"),
    "'instances' must be a non-empty JSON array": (DIGITS, _json({"inputs": []})),
    "'instances' must be a non-empty JSON array ": (DIGITS, _v1([])),
    "input 'input': each instance must have 64 values (shape [1, 8, 8]), got 63": (
        DIGITS,
        _v1([[0] * 63]),
    ),
    "input 'input': 'data' is ragged": (DIGITS, _v1([[0] * 64, [0] * 63])),
    "input 'input': 'data' for FP32 must hold numbers, got strings": (DIGITS, _v1([["x"] * 64])),
    "instances[0] must be an object {input name: value}, the model's inputs being 'a', 'b'": (
        TWO,
        _v1([[0, 0, 0]]),
    ),
    "instances[0] has keys ['a'] but the model's inputs are ['a', 'b']": (
        TWO,
        _v1([{"a": [0, 0, 0]}]),
    ),
    "input 'b': 'data' for INT32 must hold integers, got floats": (
        TWO,
        _v1([{"a": [0, 0, 0], "b": [0.5, 1]}]),
    ),
}


@pytest.mark.parametrize(("message", "case"), V1_ERRORS.items(), ids=list(V1_ERRORS))
def test_invalid_v1_requests_say_what_and_where(
    message: str, case: tuple[ModelConfig, bytes]
) -> None:
    config, body = case
    with pytest.raises(InvalidInput) as caught:
        decode_v1_instances(body, config)
    assert message.strip() in str(caught.value)


# --- properties -----------------------------------------------------------------------------


def _extremes(datatype: str) -> Array:
    dtype = to_numpy(datatype)
    if dtype.kind == "b":
        return np.array([[True, False]])
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = [info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0, 1 / 3]
    else:
        values = [np.iinfo(dtype).min, np.iinfo(dtype).max, 0, 1, np.iinfo(dtype).max - 1, 7]
    return np.array(values, dtype=dtype).reshape(2, 3)


@pytest.mark.parametrize("datatype", sorted(DTYPES))
def test_every_datatype_round_trips_its_extreme_values(datatype: str) -> None:
    x = _extremes(datatype)
    config = _config([("x", datatype, [x.shape[1]])], [("y", datatype, [x.shape[1]])])
    _assert_round_trips(config, x)


@st.composite
def _tensors(draw: st.DrawFn) -> tuple[ModelConfig, Array]:
    datatype = draw(st.sampled_from(sorted(DTYPES)))
    dtype = to_numpy(datatype)
    sample_shape = draw(st.lists(st.integers(1, 3), max_size=3))
    elements = (
        hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False) if dtype.kind == "f" else None
    )
    array = draw(hnp.arrays(dtype, (draw(st.integers(1, 4)), *sample_shape), elements=elements))
    config = _config([("x", datatype, sample_shape)], [("y", datatype, sample_shape)])
    return config, array


def _assert_round_trips(config: ModelConfig, x: Array) -> None:
    for binary in (False, True):
        outputs = [triton.InferRequestedOutput("y", binary)]
        body, header_length = _triton_body({"x": x}, binary, outputs)
        request = decode_infer_request(body, config, header_length)
        decoded = request.inputs["x"]
        assert decoded.dtype == x.dtype and decoded.shape == x.shape
        np.testing.assert_array_equal(decoded, x)
        response, json_length = encode_infer_response("m", "1", request, {"y": x}, config)
        returned = _parse(response, json_length).as_numpy("y")
        assert returned.dtype == x.dtype
        np.testing.assert_array_equal(returned, x)


@settings(max_examples=60, deadline=None)
@given(_tensors())
def test_json_and_binary_round_trip_identically(case: tuple[ModelConfig, Array]) -> None:
    _assert_round_trips(*case)
