"""Stream a file to ``bnserve.v1.Recalibration/Recalibrate`` over gRPC, with the progress bar
and report of the HTTP upload (``recalibrate.py``): ``bnserve recalibrate --grpc``.

Imported only when ``--grpc`` is given, so the HTTP client keeps starting without grpc. The
parameters are the HTTP query (``recalibration_query``), converted by the type of each field of
the proto's ``RecalibrationParameters`` (read from its zero value): one list of parameters for
both transports.
"""

import json
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TextIO

import grpc

from service.cli.client.progress import ProgressBar
from service.cli.client.recalibrate import RecalibrationUpload, file_chunks
from service.cli.client.transport import ClientError, UsageError
from service.grpc.generated.bnserve.v1 import recalibration_pb2 as pb
from service.grpc.generated.bnserve.v1 import recalibration_pb2_grpc as pb_grpc

DEFAULT_PORT = 8001
_ZERO = pb.RecalibrationParameters()
# The codes of a request the server rejected (HTTP's 4xx): exit code 2, as for HTTP.
_REJECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


class GrpcCallError(ClientError):
    """A failed call; ``code`` is its gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code

    @property
    def exit_code(self) -> int:
        return 2 if self.code in _REJECTED else 1


def grpc_parameters(query: Mapping[str, str]) -> pb.RecalibrationParameters:
    """The HTTP query string's parameters as the proto message carries them."""
    message = pb.RecalibrationParameters()
    for name, text in query.items():
        kind = type(getattr(_ZERO, name))  # str, int, float (from repr: exact) or bool
        setattr(message, name, text == "true" if kind is bool else kind(text))
    return message


def grpc_target(value: str, url: str) -> str:
    """``--grpc``'s HOST:PORT; given without one, the ``--url`` host on port 8001."""
    if value:
        return value
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return f"{host or '127.0.0.1'}:{DEFAULT_PORT}"


def _messages(
    request: RecalibrationUpload, handle: IO[bytes], on_sent: Callable[[int], None]
) -> Iterator[pb.RecalibrateRequest]:
    yield pb.RecalibrateRequest(
        header=pb.RecalibrateHeader(
            model_name=request.model,
            model_version=request.version or "",
            content_type=request.content_type,
            parameters=grpc_parameters(request.query),
        )
    )
    for chunk in file_chunks(handle, on_sent):
        yield pb.RecalibrateRequest(chunk=chunk)


def _call(
    target: str,
    request: RecalibrationUpload,
    handle: IO[bytes],
    bar: ProgressBar,
    token: str | None,
    timeout: float,
) -> str:
    """The reply's report; ``timeout`` bounds the connection, not the upload (which may take
    as long as the file needs, as the HTTP client's socket timeout does not bound it either)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(target) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            message = f"cannot reach {target}: no gRPC connection in {timeout:g} s"
            raise ClientError(message) from None
        stub = pb_grpc.RecalibrationStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Recalibrate(_messages(request, handle, bar.update), metadata=metadata)
    report: str = reply.report_json
    return report


def upload_grpc(
    target: str,
    request: RecalibrationUpload,
    token: str | None,
    progress: TextIO,
    interactive: bool,
    timeout: float,
) -> dict[str, Any]:
    """Send the file, drawing progress on ``progress``; the server's JSON report.

    ``UsageError`` for an unreadable file; ``GrpcCallError`` for a failed call (with the
    server's message and status code), ``ClientError`` for an unreachable server.
    """
    try:
        handle = request.file.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {request.file}: {exc.strerror or exc}") from exc
    with handle:
        bar = ProgressBar(request.file.stat().st_size, progress, interactive)
        try:
            text = _call(target, request, handle, bar, token, timeout)
        except grpc.RpcError as exc:
            bar.abandon()
            code = exc.code()
            raise GrpcCallError(f"{exc.details()} (gRPC {code.name})", code) from exc
        except ClientError:
            bar.abandon()
            raise
        bar.close()
    report = json.loads(text)
    if not isinstance(report, dict):
        raise ClientError("the server's report is not a JSON object")
    return report
