"""HTTP for the operator's client: stdlib ``http.client`` only, so ``bnserve`` starts fast.

Every call ends in a decoded JSON body or a ``ClientError`` carrying the server's ``error``
message and the exit code the command line returns (2 for a 4xx, 1 for anything else).
"""

import http.client
import json
import select
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 600.0


class ClientError(Exception):
    """A failed call; ``str(error)`` is the message, ``status`` the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> int:
        """2 for a request the server rejected (4xx), as argparse does for bad usage; else 1."""
        return 2 if self.status is not None and 400 <= self.status < 500 else 1


class UsageError(ClientError):
    """The command cannot be sent as given (an unreadable file, a bad URL): exit code 2."""

    @property
    def exit_code(self) -> int:
        return 2


@dataclass(frozen=True)
class Endpoint:
    """A server base URL such as ``http://host:8000`` or ``https://host/prefix``."""

    scheme: str
    netloc: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"invalid server URL {url!r}: expected http://host:port")
        return cls(parts.scheme, parts.netloc, parts.path.rstrip("/"))

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.netloc, timeout=timeout)
        return http.client.HTTPConnection(self.netloc, timeout=timeout)

    def target(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """The request target: ``prefix + path``, with ``query`` URL-encoded."""
        encoded = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"{self.prefix}{path}{encoded}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.prefix}"


def model_path(model: str, *rest: str) -> str:
    """``/v2/models/{model}/...`` with every segment percent-encoded."""
    segments = [urllib.parse.quote(part, safe="") for part in (model, *rest)]
    return "/v2/models/" + "/".join(segments)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_message(status: int, reason: str, body: bytes) -> str:
    """The server's ``{"error": ...}`` message, else the body's text, else the reason phrase."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return f"{decoded['error']} (HTTP {status})"
    text = body.decode("utf-8", "replace").strip()
    return f"{text or reason} (HTTP {status})"


def read_json(response: http.client.HTTPResponse) -> Any:
    """The response's JSON body; ``ClientError`` for a status >= 400 or a body that is not JSON."""
    body = response.read()
    if response.status >= 400:
        raise ClientError(error_message(response.status, response.reason, body), response.status)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ClientError(f"the server sent a response that is not JSON: {exc}") from exc


def call_json(
    endpoint: Endpoint,
    method: str,
    path: str,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """One small request without a body; the decoded JSON response."""
    connection = endpoint.connect(timeout)
    try:
        connection.request(method, endpoint.target(path), headers=auth_headers(token))
        return read_json(connection.getresponse())
    except OSError as exc:
        raise ClientError(f"cannot reach {endpoint}: {exc}") from exc
    finally:
        connection.close()


def _answered_early(connection: http.client.HTTPConnection) -> bool:
    """Whether the server has sent bytes before the body is complete: an early error response."""
    sock = connection.sock
    if sock is None:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def send_stream(
    connection: http.client.HTTPConnection,
    target: str,
    headers: Mapping[str, str],
    chunks: Iterable[bytes],
) -> http.client.HTTPResponse:
    """POST ``chunks`` (``headers`` must give ``Content-Length``) and return the response.

    Sending stops as soon as the server answers early (an error before the body was read to
    its end) or closes the connection, and that answer is returned rather than a broken pipe.
    """
    connection.putrequest("POST", target, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    try:
        for chunk in chunks:
            if _answered_early(connection):
                break
            connection.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading; its response, if any, says why
    return connection.getresponse()
