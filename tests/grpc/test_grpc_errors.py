"""Every error of the gRPC data plane: its status code and HTTP's message; the admin RPCs;
``bnserve_requests_total{protocol="grpc"}``."""

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN_TOKEN
from tests.grpc.grpc_support import GrpcServer, grpc_server, infer_request
from tests.helpers import sample_inputs

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MAX_BODY = 300_000
"""The second server's max_body_bytes: above digits' own bound, so both limits can be hit."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    with grpc_server(
        _repo(tmp_path_factory), tmp_path_factory.mktemp("log") / "server.log"
    ) as live:
        yield live


def _repo(factory: pytest.TempPathFactory) -> Path:
    import shutil

    from tests.conftest import BUNDLED_MODELS

    root = factory.mktemp("repo") / "models"
    shutil.copytree(BUNDLED_MODELS, root)
    return root


def _error(server: GrpcServer, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with server.stub() as stub, pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    return caught.value


def _digits(batch: int = 1) -> np.ndarray:
    return sample_inputs("digits", batch, seed=5)


CASES = [
    ("unknown model", infer_request("nope", _digits()), "NOT_FOUND",
     "model 'nope' not found in the repository"),
    ("unknown version", infer_request("digits", _digits(), version="9"), "NOT_FOUND",
     "model 'digits' has no version 9"),
    ("bad version", infer_request("digits", _digits(), version="x"), "INVALID_ARGUMENT",
     "invalid version 'x': expected a positive integer"),
    ("wrong shape", infer_request("digits", _digits().reshape(1, 1, 4, 16)), "INVALID_ARGUMENT",
     "input 'input': shape [1, 1, 4, 16] is not the model's [-1, 1, 8, 8]"),
    ("wrong datatype", infer_request("digits", _digits().astype(np.float64), "FP64"),
     "INVALID_ARGUMENT", "input 'input': datatype 'FP64' is not the model's FP32"),
    ("too big batch", infer_request("digits", _digits(65)), "RESOURCE_EXHAUSTED",
     "batch of 65 is over max_batch_size 64"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_error_code_and_message(
    server: GrpcServer, case: str, request_: service_pb2.ModelInferRequest, code: str, message: str
) -> None:
    error = _error(server, request_)
    assert (error.code().name, error.details()) == (code, message)


def test_bad_raw_length(server: GrpcServer) -> None:
    request = infer_request("digits", _digits())
    request.raw_input_contents[0] = request.raw_input_contents[0][:100]
    error = _error(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input 'input': binary_data_size is 100 bytes but shape [1, 1, 8, 8] of FP32 needs 256"
    )


def test_typed_contents_in_the_wrong_field(server: GrpcServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    tensor.contents.int_contents.extend([1] * 64)
    error = _error(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input 'input': contents.int_contents given for datatype FP32, which is read from "
        "contents.fp32_contents"
    )


def test_message_over_the_models_bound(server: GrpcServer) -> None:
    """Under max_body_bytes but larger than any valid digits request."""
    request = infer_request("digits", _digits(1000))
    error = _error(server, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(
        rf"request body of {request.ByteSize()} bytes is over the limit of \d+ bytes, the "
        r"largest valid request for model 'digits' \(max_batch_size 64\)",
        error.details(),
    ), error.details()


def test_admin_token_load_unload_and_health(server: GrpcServer) -> None:
    client = server.client()
    for headers, message in [
        (None, "admin operation: missing 'Authorization: Bearer <token>' header"),
        ({"authorization": "Bearer wrong"}, "admin operation: invalid bearer token"),
    ]:
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("wine", headers=headers)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert caught.value.message() == message
    assert client.is_model_ready("wine")  # refused calls changed nothing
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service)).status

        client.unload_model("wine", headers=ADMIN)
        assert not client.is_model_ready("wine")
        assert status("wine") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("") == health_pb2.HealthCheckResponse.SERVING
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": "wine", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        error = _error(server, infer_request("wine", sample_inputs("wine", 1)))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "model 'wine' is not loaded",
        )
        client.load_model("wine", headers=ADMIN)
        assert client.is_model_ready("wine")
        assert status("wine") == health_pb2.HealthCheckResponse.SERVING


def test_requests_are_counted_by_grpc_code(server: GrpcServer) -> None:
    before_ok = server.requests_total("wine_torch", "OK")
    before_bad = server.requests_total("wine_torch", "INVALID_ARGUMENT")
    x = sample_inputs("wine", 2)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(3):
        server.client().infer("wine_torch", [tensor])
    _error(server, infer_request("wine_torch", x.astype(np.float64), "FP64"))
    assert server.requests_total("wine_torch", "OK") == before_ok + 3
    assert server.requests_total("wine_torch", "INVALID_ARGUMENT") == before_bad + 1


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    """A small max_body_bytes and a request timeout no model call can meet."""
    env = {"BNSERVE_MAX_BODY_BYTES": str(MAX_BODY), "BNSERVE_REQUEST_TIMEOUT": "1e-9"}
    log = tmp_path_factory.mktemp("strict") / "server.log"
    with grpc_server(_repo(tmp_path_factory), log, **env) as live:
        yield live


def test_message_too_large_for_the_server(strict_server: GrpcServer) -> None:
    request = infer_request("digits", _digits(1200))
    error = _error(strict_server, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == (
        f"SERVER: Received message larger than max ({request.ByteSize()} vs. {MAX_BODY})"
    )


def test_request_timeout(strict_server: GrpcServer) -> None:
    error = _error(strict_server, infer_request("digits", _digits()))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "no result within the request timeout of 1e-09 s",
    )
    assert strict_server.requests_total("digits", "DEADLINE_EXCEEDED") == 1
