"""What the gRPC data-plane tests share: ``bnserve serve`` in a subprocess with its gRPC server
on a free port, and clients that owe nothing to bnserve's servicer code (``tritonclient.grpc``
and its own stubs, ``grpc_health``, ``grpc_reflection``)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import ADMIN_TOKEN, LiveServer, free_port, start_server

ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class GrpcServer:
    http: LiveServer
    target: str
    """``127.0.0.1:<grpc port>``."""

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.target)

    @contextmanager
    def stub(self) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
        """tritonclient's own generated stub, for requests its client never sends (typed
        contents, malformed messages)."""
        with grpc.insecure_channel(self.target, options=_UNLIMITED) as channel:
            yield service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def requests_total(self, model: str, code: str) -> float:
        """``bnserve_requests_total{model, code, protocol="grpc"}`` scraped over HTTP."""
        text = httpx.get(f"{self.http.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "bnserve_requests_total" and labels == {
                    "model": model,
                    "code": code,
                    "protocol": "grpc",
                }:
                    return sample.value
        return 0.0


_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@contextmanager
def grpc_server(models: Path, log: Path, **env: str) -> Iterator[GrpcServer]:
    port = free_port()
    # Generous: several servers start at once on a loaded machine in a full test run.
    live = start_server(models, log, timeout=180.0, BNSERVE_GRPC_PORT=str(port), **env)
    try:
        yield GrpcServer(live, f"127.0.0.1:{port}")
    finally:
        live.stop()


def infer_request(
    model: str, array: npt.NDArray[Any], datatype: str = "FP32", version: str = ""
) -> service_pb2.ModelInferRequest:
    """A request with one input ``input`` sent raw, as tritonclient sends it."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="input", datatype=datatype, shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    return request
