"""Stream a file of unlabeled samples to ``POST /v2/models/{m}/recalibrate``, with progress.

The file is read and sent in ``CHUNK_BYTES`` pieces, never whole, with its size as
``Content-Length``; the server parses and recalibrates as the bytes arrive, so the upload
rate is also the recalibration rate once the socket buffers are full.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from service.cli.client.progress import ProgressBar
from service.cli.client.transport import (
    DEFAULT_TIMEOUT,
    ClientError,
    Endpoint,
    UsageError,
    auth_headers,
    model_path,
    read_json,
    send_stream,
)

CHUNK_BYTES = 256 * 1024
NPY = "application/x-npy"
NDJSON = "application/x-ndjson"
RAW = "application/octet-stream"
_BY_SUFFIX = {".npy": NPY, ".ndjson": NDJSON, ".jsonl": NDJSON}


def content_type_for(path: Path) -> str:
    """``.npy`` -> npy, ``.ndjson``/``.jsonl`` -> ndjson, anything else -> raw samples."""
    return _BY_SUFFIX.get(path.suffix.lower(), RAW)


def recalibration_query(
    *,
    mode: str | None = None,
    batch_size: int | None = None,
    prior: float | None = None,
    momentum: float | None = None,
    layers: str | None = None,
    dry_run: bool = False,
    activate: bool = True,
) -> dict[str, str]:
    """The query string of the route: only what differs from the server-side defaults."""
    query = {
        "mode": mode,
        "batch_size": None if batch_size is None else str(batch_size),
        "prior": None if prior is None else repr(prior),
        "momentum": None if momentum is None else repr(momentum),
        "layers": layers,
        "dry_run": "true" if dry_run else None,
        "activate": None if activate else "false",
    }
    return {key: value for key, value in query.items() if value is not None}


@dataclass(frozen=True)
class RecalibrationUpload:
    model: str
    file: Path
    content_type: str
    query: dict[str, str] = field(default_factory=dict)
    version: str | None = None
    """Recalibrate this version rather than the one being served."""

    def path(self) -> str:
        if self.version is None:
            return model_path(self.model, "recalibrate")
        return model_path(self.model, "versions", self.version, "recalibrate")


def file_chunks(
    handle: IO[bytes], on_sent: Callable[[int], None], size: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """``handle``'s bytes in pieces; ``on_sent(total so far)`` once each piece was taken."""
    sent = 0
    while chunk := handle.read(size):
        yield chunk  # resumed only after the consumer has sent it
        sent += len(chunk)
        on_sent(sent)


def upload(
    endpoint: Endpoint,
    request: RecalibrationUpload,
    token: str | None,
    progress: TextIO,
    interactive: bool,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Send the file, drawing progress on ``progress``; the server's JSON report.

    ``UsageError`` for an unreadable file; ``ClientError`` for an unreachable server or an
    error response (with the server's message and status).
    """
    try:
        handle = request.file.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {request.file}: {exc.strerror or exc}") from exc
    with handle:
        total = request.file.stat().st_size
        bar = ProgressBar(total, progress, interactive)
        headers = {
            "Content-Type": request.content_type,
            "Content-Length": str(total),
            **auth_headers(token),
        }
        connection = endpoint.connect(timeout)
        try:
            target = endpoint.target(request.path(), request.query)
            response = send_stream(connection, target, headers, file_chunks(handle, bar.update))
            bar.close()
            report = read_json(response)
        except OSError as exc:
            bar.abandon()
            raise ClientError(f"cannot reach {endpoint}: {exc}") from exc
        finally:
            connection.close()
    if not isinstance(report, dict):
        raise ClientError("the server's report is not a JSON object")
    return report
