"""Malformed recalibration streams through the endpoint: each ends in a 4xx whose error says
what is wrong and where (byte offset, sample, line, layer), and the repository stays byte for
byte unchanged."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import BUNDLED_MODELS, make_client
from tests.helpers import sample_inputs
from tests.recalibration.recalibration_support import (
    ADMIN,
    BODIES,
    F32,
    NDJSON,
    NPY,
    RAW,
    ndjson_body,
    npy_body,
    post_chunks,
    raw_body,
    recalibrate,
    tree_snapshot,
)

DIGITS = sample_inputs("digits", 100, seed=4)  # 256 bytes a sample


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors") / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", root / "digits")
    return root


@pytest.fixture(scope="module")
def shared(repo: Path) -> Iterator[TestClient]:
    with make_client(repo) as client:
        yield client


def _with_value(x: F32, sample: int, index: tuple[int, ...], value: float = np.nan) -> F32:
    bad = x.copy()
    bad[(sample, *index)] = value
    return bad


def _ndjson_with_line(x: F32, number: int, line: bytes) -> bytes:
    lines = ndjson_body(x).splitlines(keepends=True)
    lines[number - 1] = line + b"\n"
    return b"".join(lines)


def _npy_declaring(n: int, data: bytes) -> bytes:
    header = npy_body(np.zeros((n, 1, 8, 8), np.float32))[: -n * 256]
    return header + data


HEADER = len(npy_body(DIGITS)) - DIGITS.nbytes  # 128 bytes
BadStream = tuple[str | None, bytes, dict[str, object], int, list[str]]
BAD_STREAMS: dict[str, BadStream] = {
    "npy wrong shape": (
        NPY,
        npy_body(np.zeros((10, 1, 8, 9), np.float32)),
        {},
        400,
        [".npy shape (10, 1, 8, 9)", "(n, 1, 8, 8)"],
    ),
    "npy wrong dtype": (NPY, npy_body(DIGITS.astype(np.int32)), {}, 400, ["dtype <i4", "FP32"]),
    "npy truncated data": (
        NPY,
        npy_body(DIGITS)[:-300],
        {},
        400,
        ["truncated sample 98", f"byte {HEADER + 98 * 256}"],
    ),
    "npy fewer samples than declared": (
        NPY,
        _npy_declaring(120, raw_body(DIGITS)),
        {},
        400,
        ["header declares 120 samples", "holds 100"],
    ),
    "npy NaN": (
        NPY,
        npy_body(_with_value(DIGITS, 70, (0, 3, 4))),
        {},
        400,
        ["sample 70", f"byte {HEADER + 70 * 256}", "[0, 3, 4] is NaN"],
    ),
    "raw truncated sample": (
        RAW,
        raw_body(DIGITS)[:-100],
        {},
        400,
        ["truncated sample 99 at byte 25344", "156 of 256 bytes"],
    ),
    "raw infinity": (
        RAW,
        raw_body(_with_value(DIGITS, 5, (0, 0, 1), np.inf)),
        {},
        400,
        ["sample 5 at byte 1280", "[0, 0, 1] is infinite"],
    ),
    "raw NaN after a full batch": (
        RAW,
        raw_body(_with_value(DIGITS, 70, (0, 7, 7))),
        {},
        400,
        ["sample 70 at byte 17920", "[0, 7, 7] is NaN", "byte 18172"],
    ),
    "ndjson bad line": (
        NDJSON,
        _ndjson_with_line(DIGITS, 5, b"[[1.0, 2.0,"),
        {},
        400,
        ["line 5", "invalid JSON"],
    ),
    "ndjson wrong shape": (
        NDJSON,
        _ndjson_with_line(DIGITS, 3, b"[[1.0, 2.0]]"),
        {},
        400,
        ["line 3", "expected shape [1, 8, 8]", "got [1, 2]"],
    ),
    "ndjson wrong dtype": (
        NDJSON,
        _ndjson_with_line(DIGITS, 2, b'"pixels"'),
        {},
        400,
        ["line 2", "expected shape"],
    ),
    "ndjson unknown input": (
        NDJSON,
        _ndjson_with_line(DIGITS, 4, b'{"image": 1}'),
        {},
        400,
        ["line 4", "unknown input 'image'"],
    ),
    "no Content-Type": (None, raw_body(DIGITS), {}, 415, ["Content-Type", "application/x-npy"]),
    "unsupported Content-Type": (
        "text/csv",
        b"1,2,3\n",
        {},
        415,
        ["'text/csv'", "application/x-ndjson"],
    ),
    "unknown mode": (NPY, npy_body(DIGITS), {"mode": "fancy"}, 400, ["mode 'fancy'"]),
    "momentum with cumulative": (
        NPY,
        npy_body(DIGITS),
        {"mode": "cumulative", "momentum": 0.5},
        400,
        ["momentum", "cumulative"],
    ),
    "prior with ema": (NPY, npy_body(DIGITS), {"mode": "ema", "prior": 10}, 400, ["prior", "ema"]),
    "infinite prior": (NPY, npy_body(DIGITS), {"prior": "inf"}, 400, ["prior", "finite"]),
    "momentum out of range": (
        NPY,
        npy_body(DIGITS),
        {"mode": "ema", "momentum": 1.5},
        400,
        ["momentum"],
    ),
    "batch_size of one": (NPY, npy_body(DIGITS), {"batch_size": 1}, 400, ["batch_size"]),
    "layers match nothing": (
        NPY,
        npy_body(DIGITS),
        {"layers": "conv*,head"},
        400,
        ["'conv*,head' matches no layer", "bn1, bn2, fc_bn"],
    ),
    "activations overflow": (
        RAW,
        raw_body(np.full_like(DIGITS, 3e38)),
        {},
        400,
        ["layer 'bn1'", "non-finite activations in batch 0"],
    ),
    "empty stream": (RAW, b"", {}, 400, ["no samples"]),
    "one sample": (RAW, raw_body(DIGITS[:1]), {}, 400, ["fc_bn", "1 value(s)"]),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_a_bad_stream_is_a_4xx_that_writes_nothing(
    shared: TestClient, repo: Path, case: str
) -> None:
    media, body, query, status, fragments = BAD_STREAMS[case]
    before = tree_snapshot(repo)
    response = recalibrate(shared, "digits", body, media, **query)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error
    assert tree_snapshot(repo) == before


@pytest.mark.parametrize("media", [NPY, RAW, NDJSON])
@pytest.mark.parametrize("step", [1000, 4096, 30_000])
def test_an_error_is_located_in_the_body_whatever_the_chunking(
    shared: TestClient, repo: Path, media: str, step: int
) -> None:
    body = BODIES[media](_with_value(DIGITS, 70, (0, 7, 7)))
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    before = tree_snapshot(repo)
    url = "/v2/models/digits/recalibrate"
    response = post_chunks(shared, url, chunks, ADMIN | {"Content-Type": media})
    assert response.status_code == 400, response.text
    where = (
        "line 71"
        if media == NDJSON
        else f"sample 70 at byte {70 * 256 + (HEADER if media == NPY else 0)}"
    )
    assert where in response.json()["error"]
    assert tree_snapshot(repo) == before


SAMPLES_50 = {"recalibration_max_samples": 50}
BYTES_12K = {"recalibration_max_bytes": 12_000}


@pytest.mark.parametrize(
    ("limits", "media", "body", "fragments"),
    [
        (
            SAMPLES_50,
            RAW,
            raw_body(DIGITS[:60]),
            ["sample 50 at byte 12800", "limit of 50 samples"],
        ),
        (SAMPLES_50, NDJSON, ndjson_body(DIGITS[:60]), ["line 51", "limit of 50 samples"]),
        (SAMPLES_50, NPY, npy_body(DIGITS[:60]), ["declares 60 samples", "limit of 50"]),
        (BYTES_12K, RAW, raw_body(DIGITS[:60]), ["limit of 12000 bytes"]),
        (BYTES_12K, NPY, npy_body(DIGITS[:48]), ["limit of 12000 bytes"]),
        (BYTES_12K, NDJSON, ndjson_body(DIGITS[:40]), ["limit of 12000 bytes"]),
    ],
    ids=["raw samples", "ndjson samples", "npy samples", "raw bytes", "npy bytes", "ndjson bytes"],
)
def test_a_stream_over_the_limits_is_413_and_writes_nothing(
    tmp_path: Path, limits: dict[str, int], media: str, body: bytes, fragments: list[str]
) -> None:
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", root / "digits")
    before = tree_snapshot(root)
    with make_client(root, **limits) as client:
        response = recalibrate(client, "digits", body, media)
        assert response.status_code == 413, response.text
        for fragment in fragments:
            assert fragment in response.json()["error"]
        assert tree_snapshot(root) == before
        # Under the limits the same endpoint works: the 413 was about the size only.
        assert recalibrate(client, "digits", raw_body(DIGITS[:40]), RAW).status_code == 200
