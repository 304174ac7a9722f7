"""``tritonclient.grpc``, unchanged, against ``bnserve serve``'s gRPC server: results equal
to the torch eval forward of every example model, typed and raw contents alike, bit-identical
to HTTP's answers for the same sample; metadata, readiness, health and reflection."""

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import service_pb2

from tests.conftest import BUNDLED_MODELS
from tests.grpc.grpc_support import GrpcServer, grpc_server
from tests.helpers import EXAMPLE_MODELS, infer_body, output_of, reference_forward, sample_inputs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    """Read-only tests share one server on the bundled repository."""
    with grpc_server(BUNDLED_MODELS, tmp_path_factory.mktemp("grpc") / "server.log") as live:
        yield live


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_raw_contents_match_the_torch_forward(server: GrpcServer, model: str) -> None:
    x = sample_inputs(model, 5, seed=11)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput("logits")]
    result = server.client().infer(model, [tensor], outputs=outputs, request_id="r7")
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference_forward(model, x), rtol=1e-5, atol=1e-5
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (model, "1", "r7")


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_typed_contents_match_the_torch_forward(server: GrpcServer, model: str) -> None:
    x = sample_inputs(model, 4, seed=12)
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with server.stub() as stub:
        response = stub.ModelInfer(request)
    # Typed in, typed out: the reply carries fp32_contents, not raw bytes.
    assert not response.raw_output_contents
    (output,) = response.outputs
    expected = reference_forward(model, x)
    assert (output.name, output.datatype) == ("logits", "FP32")
    assert list(output.shape) == list(expected.shape)
    logits = np.asarray(output.contents.fp32_contents, dtype=np.float32).reshape(output.shape)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["digits", "digits_torch", "wine"])
def test_grpc_answers_bit_identical_to_http(server: GrpcServer, model: str) -> None:
    x = sample_inputs(model, 1, seed=13)
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    over_grpc = server.client().infer(model, [tensor]).as_numpy("logits")
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http.port}")
    binary = httpclient.InferInput("input", list(x.shape), "FP32")
    binary.set_data_from_numpy(x, binary_data=True)
    over_binary = http.infer(model, [binary]).as_numpy("logits")
    response = httpx.post(f"{server.http.url}/v2/models/{model}/infer", content=infer_body(x))
    over_json = output_of(response.json())
    assert over_grpc.tobytes() == over_binary.tobytes() == over_json.tobytes()


def test_metadata_readiness_and_index(server: GrpcServer) -> None:
    client = server.client()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("wine_torch", "1")
    metadata = client.get_server_metadata()
    http_metadata = httpx.get(f"{server.http.url}/v2").json()
    assert (metadata.name, metadata.version) == (http_metadata["name"], http_metadata["version"])
    assert list(metadata.extensions) == http_metadata["extensions"]
    for model in ("digits", "wine_torch"):
        grpc_model = client.get_model_metadata(model, as_json=True)
        http_model = httpx.get(f"{server.http.url}/v2/models/{model}").json()
        for key in ("name", "versions", "platform"):
            assert grpc_model[key] == http_model[key]
        for kind in ("inputs", "outputs"):
            assert [
                {**t, "shape": [int(d) for d in t["shape"]]} for t in grpc_model[kind]
            ] == http_model[kind]
    index = client.get_model_repository_index(as_json=True)["models"]
    names = sorted(path.name for path in BUNDLED_MODELS.iterdir() if path.is_dir())
    assert [entry["name"] for entry in index] == names
    assert {entry["state"] for entry in index} == {"READY"}


def test_health_overall_and_per_model(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "digits", "wine_torch"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "unknown service 'nope'"


def test_reflection_lists_and_describes_the_services(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {
            "inference.GRPCInferenceService",
            "bnserve.v1.Recalibration",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        service = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
        ours = {method.name for method in service.methods}
    # Every RPC of tritonclient's own copy of the proto that bnserve claims to serve.
    upstream = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    claimed = {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    }  # fmt: skip
    assert ours == claimed <= {method.name for method in upstream.methods}
    for name in claimed:
        assert (
            service.methods_by_name[name].input_type.fields_by_name.keys()
            == upstream.methods_by_name[name].input_type.fields_by_name.keys()
        )
