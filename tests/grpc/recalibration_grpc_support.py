"""What the gRPC recalibration tests share: an app serving HTTP and gRPC from one context, and
calls of ``bnserve.v1.Recalibration/Recalibrate`` from a plain ``grpc`` channel (the client side
owes nothing to bnserve's servicer code).
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi.testclient import TestClient

from service.grpc.generated.bnserve.v1 import recalibration_pb2 as pb
from service.grpc.generated.bnserve.v1 import recalibration_pb2_grpc as pb_grpc
from tests.conftest import ADMIN_TOKEN, free_port, make_client

ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@contextmanager
def serving_both(models: Path, **settings: object) -> Iterator[tuple[TestClient, str]]:
    """The app on ``models`` with its gRPC server on a free port of 127.0.0.1, started by its
    lifespan on the test client's event loop, as ``bnserve serve`` starts it on uvicorn's: one
    registry, recalibrator and repository behind both transports. Yields the client and the
    gRPC target."""
    port = free_port()
    with make_client(models, grpc_port=port, **settings) as client:
        yield client, f"127.0.0.1:{port}"


def header(
    model: str, content_type: str | None, version: str = "", source: str = "", **params: Any
) -> pb.RecalibrateHeader:
    return pb.RecalibrateHeader(
        model_name=model,
        model_version=version,
        content_type=content_type or "",
        parameters=pb.RecalibrationParameters(**params),
        source=source,
    )


def messages(head: pb.RecalibrateHeader | None, chunks: Iterable[bytes]) -> Iterator[Any]:
    """The header alone first (when given), then one message per chunk."""
    if head is not None:
        yield pb.RecalibrateRequest(header=head)
    for chunk in chunks:
        yield pb.RecalibrateRequest(chunk=chunk)


@dataclass(frozen=True)
class Answer:
    """A call's outcome: the reply's JSON text, or the status code and message."""

    code: grpc.StatusCode
    details: str
    report_json: str | None = None


def call(
    target: str,
    requests: Iterator[Any],
    metadata: tuple[tuple[str, str], ...] = ADMIN_METADATA,
    timeout: float = 60.0,
) -> Answer:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecalibrationStub(channel)
        try:
            reply = stub.Recalibrate(requests, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            return Answer(exc.code(), exc.details() or "")
    return Answer(grpc.StatusCode.OK, "", reply.report_json)


def recalibrate(
    target: str, model: str, body: bytes, media: str, chunk: int = 65_536, **params: Any
) -> Answer:
    """The whole ``body`` in ``chunk``-byte messages after the header, with the admin token."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return call(target, messages(header(model, media, **params), pieces))
