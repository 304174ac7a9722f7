"""Streamed uploads for the recalibration benchmarks: bodies generated chunk by chunk.

``post_stream`` sends a POST whose body comes from an iterator of chunks (with a declared
length, or chunked transfer encoding) and never holds more than one chunk; the body
generators draw float32 samples on the fly from a seeded generator.
"""

import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class UploadResult:
    status: int
    body: bytes
    seconds: float
    """From the first byte sent to the last response byte read."""


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before the response headers: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            if length is None:
                break
            raise ConnectionError("connection closed before the end of the response body")
        body += chunk
    return status, body


def post_stream(
    host: str,
    port: int,
    path: str,
    chunks: Iterable[bytes | memoryview],
    length: int | None,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> UploadResult:
    """POST the body taken from ``chunks`` to ``path``: ``length`` bytes declared, or chunked
    transfer encoding if ``length`` is None; one connection, then closed.

    If the server answers early (an error), the rest of the body is not sent.
    """
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Type: {content_type}",
        framing,
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((host, port)) as sock:
        start = time.perf_counter()
        sock.sendall(head)
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the end of the body: refused
                if length is None:
                    sock.sendall(b"%x\r\n" % len(chunk))
                sock.sendall(chunk)
                if length is None:
                    sock.sendall(b"\r\n")
            else:
                if length is None:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused the body; its response says why
        status, body = _read_response(sock)
        return UploadResult(status, body, time.perf_counter() - start)


def random_samples(
    total: int, sample_shape: tuple[int, ...], chunk_samples: int, seed: int = 0
) -> Iterator[npt.NDArray[np.float32]]:
    """``total`` standard-normal float32 samples in chunks of ``chunk_samples`` (last shorter)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < total:
        count = min(chunk_samples, total - done)
        yield rng.standard_normal((count, *sample_shape), dtype=np.float32)
        done += count


def raw_body(
    total: int, sample_shape: tuple[int, ...], chunk_samples: int, seed: int = 0
) -> Iterator[bytes]:
    """An ``application/octet-stream`` body: raw little-endian float32 samples, generated."""
    for block in random_samples(total, sample_shape, chunk_samples, seed):
        yield block.tobytes()


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The header of a version-1.0 ``.npy`` file of little-endian float32 with ``shape``."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    padding = 64 - (10 + len(text) + 1) % 64  # the data starts on a 64-byte boundary
    text += " " * padding + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


def npy_chunks(data: npt.NDArray[np.float32], chunk_samples: int) -> Iterator[bytes]:
    """``data`` (C-contiguous float32) as a ``.npy`` body, sent ``chunk_samples`` at a time."""
    yield npy_header(tuple(data.shape))
    for start in range(0, len(data), chunk_samples):
        yield data[start : start + chunk_samples].tobytes()
