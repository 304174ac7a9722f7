"""HTTP/1.1 over a bare socket, for tests that must control what is sent and when: headers
without their body, part of a body, a chunked body cut at a chosen point."""

import socket
from dataclasses import dataclass

import orjson


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        message = orjson.loads(self.body)["error"]
        assert isinstance(message, str) and message
        return message


def open_request(
    port: int, method: str, path: str, headers: dict[str, str], timeout: float = 30.0
) -> socket.socket:
    """A connection on which the request line and ``headers`` (and nothing else) were sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())  # UTF-8: paths may hold any text
    return sock


def chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a ``Transfer-Encoding: chunked`` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def read_answer(sock: socket.socket) -> Answer:
    """One response: status line, headers, then ``Content-Length`` bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        received = sock.recv(65536)
        assert received, f"connection closed before a response: {data!r}"
        data += received
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    while len(body) < int(headers.get("content-length", "0")):
        received = sock.recv(65536)
        assert received, "connection closed in the middle of the response body"
        body += received
    return Answer(int(status_line.split()[1]), headers, body)


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """A whole POST on a connection of its own."""
    fields = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    with open_request(port, "POST", path, fields) as sock:
        sock.sendall(body)
        return read_answer(sock)
