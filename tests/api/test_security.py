"""Security checks against a real ``bnserve serve``: admin authentication, path tricks in model
names and versions, and body limits enforced before a body is read whole.

The repository sits in a folder beside a decoy: a complete, loadable model (``decoy``, which
is ``<repository>/../decoy``) and a secret file, both outside the repository. A path trick that
escaped the repository would serve or write them: the whole folder is snapshotted (sizes,
contents, mtimes of files and folders, so even a file created and removed again shows) and must
not change, and no response may carry the secret.

Requests go out as raw bytes over a socket: HTTP clients normalize ``..`` segments away, and
the body-limit checks send the headers alone and read the answer without sending the body.
"""

import base64
import hashlib
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from service.config import load_model_config
from service.protocol.limits import body_bounds
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, LiveServer, start_server
from tests.helpers import infer_body, sample_inputs
from tests.raw_http import Answer, open_request, read_answer

LIMIT = 1 << 20
"""Body limit of the server under test (inference and recalibration), 1 MiB."""
WINE_BOUNDS = body_bounds("wine", load_model_config(BUNDLED_MODELS / "wine" / "config.toml"))
"""The wine model's own, lower, inference body limits."""
INDEX_LIMIT = 64 * 1024
SECRET = "secret-7f3a9c1e-not-for-clients"
ADMIN = f"Bearer {ADMIN_TOKEN}"
RAW = {"Content-Type": "application/octet-stream"}
WINE = sample_inputs("wine", 64)
Request = tuple[str, str, dict[str, str], bytes]
"""Method, request target (sent as is), headers, body."""


@dataclass
class Target:
    server: LiveServer
    root: Path
    """``models`` (the repository), ``decoy`` (a model outside it), ``secret.txt``, the log."""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("security")
    models = root / "models"
    shutil.copytree(BUNDLED_MODELS, models)
    shutil.copytree(models / "wine" / "1", models / "wine" / "2")  # something to activate
    (models / "wine" / "active").write_text("1\n")
    with (models / "wine" / "config.toml").open("a") as config:
        config.write("max_overhead = 1.0\n")  # in [drift]: tap every batch, so resets show
    shutil.copytree(BUNDLED_MODELS / "wine", root / "decoy")
    with (root / "decoy" / "config.toml").open("a") as config:
        config.write(f"# {SECRET}\n")
    (root / "secret.txt").write_text(SECRET)
    server = start_server(
        models,
        root / "server.log",
        BNSERVE_MAX_BODY_BYTES=str(LIMIT),
        BNSERVE_RECALIBRATION_MAX_BYTES=str(LIMIT),
    )
    try:
        yield Target(server, root)
    finally:
        server.stop()


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under ``root`` but the server log: size, mtime, content hash."""
    entries = {}
    for path in sorted(root.rglob("*")):
        if path.name != "server.log":
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            entries[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, digest)
    return entries


def send(
    target: Target, method: str, path: str, headers: dict[str, str] | None = None
) -> socket.socket:
    """A connection on which the request line and headers (and nothing else) were sent."""
    return open_request(target.server.port, method, path, headers or {}, timeout=10)


def request(
    target: Target, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Answer:
    """One request with exactly this request target, on a connection of its own."""
    fields = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    with send(target, method, path, fields) as sock:
        sock.sendall(body)
        return read_answer(sock)


def infer(target: Target) -> None:
    assert request(target, "POST", "/v2/models/wine/infer", body=infer_body(WINE)).status == 200


def drift_window(target: Target) -> int:
    """Samples in wine's drift windows once every served batch is tapped (reset empties them)."""
    for _ in range(600):
        drift = orjson.loads(request(target, "GET", "/v2/models/wine/drift").body)
        if drift["batches_tapped"] == drift["batches_seen"]:
            return int(drift["layers"][0]["window_samples"])
        time.sleep(0.05)
    raise AssertionError("drift taps do not land")


def wine_active(target: Target) -> str:
    active: str = orjson.loads(request(target, "GET", "/v2/models/wine").body)["parameters"][
        "active_version"
    ]
    return active


ADMIN_ROUTES = [
    ("/v2/models/wine/recalibrate", RAW, WINE.tobytes()),
    ("/v2/models/wine/versions/1/recalibrate", RAW, WINE.tobytes()),
    ("/v2/models/wine/versions/2/activate", {}, b""),
    ("/v2/repository/models/wine/load", {}, b""),
    ("/v2/repository/models/wine/unload", {}, b""),
    ("/v2/models/wine/drift/reset", {}, b""),
]
_BASIC = base64.b64encode(f"admin:{ADMIN_TOKEN}".encode()).decode()
BAD_CREDENTIALS: dict[str, tuple[dict[str, str], str]] = {
    "no header": ({}, ""),
    "wrong token": ({"Authorization": "Bearer not-the-token"}, ""),
    "token prefix": ({"Authorization": ADMIN[:-1]}, ""),
    "token and more": ({"Authorization": ADMIN + "x"}, ""),
    "empty bearer": ({"Authorization": "Bearer"}, ""),
    "basic scheme": ({"Authorization": f"Basic {_BASIC}"}, ""),
    "basic, bare token": ({"Authorization": f"Basic {ADMIN_TOKEN}"}, ""),
    "token scheme": ({"Authorization": f"Token {ADMIN_TOKEN}"}, ""),
    "no scheme": ({"Authorization": ADMIN_TOKEN}, ""),
    "other header": ({"X-Admin-Token": ADMIN_TOKEN}, ""),
    "cookie": ({"Cookie": f"token={ADMIN_TOKEN}"}, ""),
    "query token": ({}, f"?token={ADMIN_TOKEN}"),
    "query access_token": ({}, f"?access_token={ADMIN_TOKEN}"),
    "query authorization": ({}, f"?authorization=Bearer%20{ADMIN_TOKEN}"),
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_admin_routes_refuse_anything_but_the_bearer_token(
    target: Target, credentials: str
) -> None:
    headers, query = BAD_CREDENTIALS[credentials]
    infer(target)
    before, samples, active = snapshot(target.root), drift_window(target), wine_active(target)
    assert samples > 0
    for path, extra, body in ADMIN_ROUTES:
        answer = request(target, "POST", path + query, {**extra, **headers}, body)
        assert answer.status == 401, (path, answer)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "token" in answer.error()
    assert request(target, "GET", "/v2/models/wine/ready").status == 200  # still loaded
    assert (drift_window(target), wine_active(target)) == (samples, active)
    assert snapshot(target.root) == before


def test_the_token_itself_is_accepted(target: Target) -> None:
    """The control for the test above: the same routes answer the real token."""
    admin = {"Authorization": ADMIN}
    infer(target)
    assert drift_window(target) > 0
    assert request(target, "POST", "/v2/models/wine/drift/reset", admin).status == 200
    assert drift_window(target) == 0
    for action in ("unload", "load"):
        assert request(target, "POST", f"/v2/repository/models/wine/{action}", admin).status == 200
    # Activating the active version again leaves ``active`` as it was.
    assert request(target, "POST", "/v2/models/wine/versions/1/activate", admin).status == 200
    assert wine_active(target) == "1"


NAMES = [
    "..", "%2e%2e", "%2E%2E", "%252e%252e", "..%2Fdecoy", "..%2fdecoy", "%2e%2e%2Fdecoy",
    "..%5Cdecoy", "wine%2F..%2F..%2Fdecoy", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
    "{decoy}", "decoy", ".decoy", "wine..", "~", "wine%00", "%00decoy", "wine%20",
    "w%D1%96ne",  # Cyrillic i
    "%EF%BD%97ine",  # fullwidth w
    "wine%E2%80%8B",  # zero-width space
    "a" * 129, "a" * 10_000,
]  # fmt: skip
"""Model names, as sent in the URL; ``{decoy}`` is the decoy's absolute path, encoded."""

VERSIONS = [
    "-1", "0", "1e3", "01", "1.0", "+1", "0x1", "%201", "1%20", "1%00", "%2e%2e", "..%2F1",
    "1%2F..%2F2", "..%2F..%2Fdecoy%2F1", "%D9%A1", "%EF%BC%91", "99999999999999999999",
    "9" * 10_000,
]  # fmt: skip
"""Versions that are not a positive decimal integer (%D9%A1 and %EF%BC%91 are Arabic-Indic
and fullwidth digits one, which Python's ``int()`` would accept)."""

LITERAL_PATHS = [
    "/v2/models/../decoy/infer",
    "/v2/models/wine/../../decoy/infer",
    "/v2/models/../../decoy",
    "/v2/models//infer",
    "/v2/repository/models/../decoy/load",
    "/v2/models/wine/versions/../1/infer",
    "/v2/models/wine/versions//activate",
]
"""Dot segments and empty segments, sent literally (no client normalizes them away here)."""


def _name_requests(name: str) -> list[Request]:
    admin, raw = {"Authorization": ADMIN}, {"Authorization": ADMIN, **RAW}
    model, predict = f"/v2/models/{name}", orjson.dumps({"instances": WINE.tolist()})
    return [
        *(
            ("GET", model + suffix, {}, b"")
            for suffix in ("", "/ready", "/stats", "/versions", "/drift")
        ),
        ("POST", model + "/infer", {}, infer_body(WINE)),
        ("POST", f"/v1/models/{name}:predict", {}, predict),
        ("POST", model + "/recalibrate", raw, WINE.tobytes()),
        ("POST", model + "/versions/2/activate", admin, b""),
        ("POST", model + "/drift/reset", admin, b""),
        ("POST", f"/v2/repository/models/{name}/load", admin, b""),
        ("POST", f"/v2/repository/models/{name}/unload", admin, b""),
    ]


def _version_requests(version: str) -> list[Request]:
    base = f"/v2/models/wine/versions/{version}"
    return [
        *(("GET", base + suffix, {}, b"") for suffix in ("", "/ready", "/stats", "/drift")),
        ("POST", base + "/infer", {}, infer_body(WINE)),
        ("POST", base + "/recalibrate", {"Authorization": ADMIN, **RAW}, WINE.tobytes()),
        ("POST", base + "/activate", {"Authorization": ADMIN}, b""),
    ]


def assert_refused(target: Target, requests: list[Request]) -> None:
    """Each request gets a 4xx without the secret; nothing on disk changes, wine stays on v1."""
    before = snapshot(target.root)
    for method, path, headers, body in requests:
        answer = request(target, method, path, headers, body)
        assert 400 <= answer.status < 500, (method, path[:80], answer.status, answer.body[:200])
        assert SECRET.encode() not in answer.body
        if answer.headers.get("content-type") == "application/json":
            answer.error()  # the app answered, in its error format (else uvicorn refused it)
    assert snapshot(target.root) == before
    assert wine_active(target) == "1"


@pytest.mark.parametrize("name", NAMES, ids=lambda name: name[:24])
def test_model_name_tricks_are_refused_and_touch_nothing(target: Target, name: str) -> None:
    name = name.replace("{decoy}", quote(str(target.root / "decoy"), safe=""))
    assert_refused(target, _name_requests(name))


@pytest.mark.parametrize("version", VERSIONS, ids=lambda version: version[:24])
def test_version_tricks_are_refused_and_touch_nothing(target: Target, version: str) -> None:
    assert_refused(target, _version_requests(version))


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_literal_dot_segments_are_refused_and_touch_nothing(target: Target, method: str) -> None:
    assert_refused(
        target, [(method, path, {"Authorization": ADMIN}, b"") for path in LITERAL_PATHS]
    )


LIMITED = [
    ("/v2/models/wine/infer", {}, WINE_BOUNDS.json),
    ("/v2/models/wine/versions/1/infer", {}, WINE_BOUNDS.json),
    ("/v1/models/wine:predict", {}, WINE_BOUNDS.v1),
    ("/v2/repository/index", {}, INDEX_LIMIT),
    ("/v2/models/wine/recalibrate", {"Authorization": ADMIN, **RAW}, LIMIT),
]
STREAMED = LIMITED


@pytest.mark.parametrize(("path", "headers", "limit"), LIMITED, ids=[p for p, _, _ in LIMITED])
def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    target: Target, path: str, headers: dict[str, str], limit: int
) -> None:
    started = time.monotonic()
    declared = {"Content-Type": "application/json", "Content-Length": str(limit + 1), **headers}
    with send(target, "POST", path, declared) as sock:  # and not one byte of the body
        answer = read_answer(sock)
    assert answer.status == 413
    assert str(limit) in answer.error()
    assert time.monotonic() - started < 5
    assert request(target, "GET", "/v2/health/live").status == 200


@pytest.mark.parametrize(("path", "headers", "limit"), STREAMED, ids=[p for p, _, _ in STREAMED])
def test_a_chunked_body_over_the_limit_is_refused_before_it_ends(
    target: Target, path: str, headers: dict[str, str], limit: int
) -> None:
    before = snapshot(target.root)
    chunk = bytes(16 * 1024)  # zeros: valid samples for the recalibration stream too
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked", **headers}
    with send(target, "POST", path, chunked) as sock:
        for _ in range(limit // len(chunk) + 1):  # just over the limit, and no last chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = read_answer(sock)
    assert answer.status == 413
    assert str(limit) in answer.error()
    assert request(target, "GET", "/v2/health/live").status == 200
    assert snapshot(target.root) == before
