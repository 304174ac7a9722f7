"""Recalibration bodies through the endpoint: any chunking and any format of the same samples
give bit-identical statistics; every malformed stream is a 4xx naming what and where, and
leaves the repository byte for byte unchanged."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.conftest import BUNDLED_MODELS, make_client
from tests.helpers import sample_inputs
from tests.recalibration_support import (
    ADMIN,
    BODIES,
    F32,
    NDJSON,
    NPY,
    RAW,
    Stats,
    assert_stats_identical,
    file_statistics,
    ndjson_body,
    npy_body,
    post_chunks,
    raw_body,
    recalibrate,
    split_at,
    tree_snapshot,
)

MODEL, BATCH = "wine", 8  # 13 float32 features: 52 bytes a sample
STREAM = sample_inputs("wine", 44, seed=3)  # 5 full batches and a 4-sample tail
DIGITS = sample_inputs("digits", 100, seed=4)  # 256 bytes a sample


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("streams") / "models"
    for name in ("wine", "digits"):
        shutil.copytree(BUNDLED_MODELS / name, root / name)
    return root


@pytest.fixture(scope="module")
def shared(repo: Path) -> Iterator[TestClient]:
    with make_client(repo) as client:
        yield client


def chunked_statistics(client: TestClient, repo: Path, media: str, chunks: list[bytes]) -> Stats:
    """Upload ``chunks`` as separate body messages into a new (inactive) version."""
    url = f"/v2/models/{MODEL}/recalibrate?batch_size={BATCH}&activate=false"
    response = post_chunks(client, url, chunks, ADMIN | {"Content-Type": media})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["samples"], report["batches"]) == (len(STREAM), len(STREAM) // BATCH)
    return file_statistics(repo / MODEL / report["version"])


@pytest.fixture(scope="module")
def baseline(shared: TestClient, repo: Path) -> Stats:
    """The statistics of the stream sent in one piece, as npy."""
    return chunked_statistics(shared, repo, NPY, [npy_body(STREAM)])


def boundaries(media: str, body: bytes) -> list[int]:
    """Offsets where parsers change state: sample or line ends (and one byte either side)."""
    if media == NDJSON:
        ends = [i + 1 for i, byte in enumerate(body) if byte == ord("\n")]
    else:
        start = len(body) - len(raw_body(STREAM))  # the npy header, 0 for raw
        ends = [start + i * STREAM[0].nbytes for i in range(len(STREAM) + 1)]
    return sorted({max(0, min(len(body), e + d)) for e in ends for d in (-1, 0, 1)})


@st.composite
def chunkings(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    media = draw(st.sampled_from([NPY, RAW, NDJSON]))
    body = BODIES[media](STREAM)
    cut = st.one_of(st.integers(0, len(body)), st.sampled_from(boundaries(media, body)))
    return media, split_at(body, draw(st.lists(cut, max_size=80)))


@settings(max_examples=25, deadline=None)
@given(chunking=chunkings())
def test_any_chunking_gives_bit_identical_statistics(
    shared: TestClient, repo: Path, baseline: Stats, chunking: tuple[str, list[bytes]]
) -> None:
    media, chunks = chunking
    assert_stats_identical(chunked_statistics(shared, repo, media, chunks), baseline)


@pytest.mark.parametrize("media", [NPY, RAW])
def test_one_byte_chunks_give_bit_identical_statistics(
    shared: TestClient, repo: Path, baseline: Stats, media: str
) -> None:
    body = BODIES[media](STREAM)
    chunks = [body[i : i + 1] for i in range(len(body))]
    assert_stats_identical(chunked_statistics(shared, repo, media, chunks), baseline)


def test_ndjson_split_inside_every_line_gives_bit_identical_statistics(
    shared: TestClient, repo: Path, baseline: Stats
) -> None:
    lines = ndjson_body(STREAM).splitlines(keepends=True)
    chunks = [part for line in lines for part in (line[:7], line[7:-1], line[-1:])]
    assert_stats_identical(chunked_statistics(shared, repo, NDJSON, chunks), baseline)


@settings(max_examples=10, deadline=None)
@given(
    samples=arrays(
        np.float32,
        st.tuples(st.integers(2, 24), st.just(13)),
        elements=st.floats(-50, 50, width=32),
    )
)
def test_npy_raw_and_ndjson_bodies_of_the_same_samples_agree(
    shared: TestClient, repo: Path, samples: F32
) -> None:
    results = {}
    for media, encode in BODIES.items():
        response = recalibrate(
            shared, MODEL, encode(samples), media, batch_size=BATCH, activate=False
        )
        assert response.status_code == 200, (media, response.text)
        results[media] = file_statistics(repo / MODEL / response.json()["version"])
    assert_stats_identical(results[RAW], results[NPY])
    assert_stats_identical(results[NDJSON], results[NPY])


def test_float64_npy_of_float32_values_gives_the_same_statistics(
    shared: TestClient, repo: Path, baseline: Stats
) -> None:
    body = npy_body(STREAM.astype(np.float64))
    assert_stats_identical(chunked_statistics(shared, repo, NPY, [body]), baseline)


def test_dry_run_reports_without_writing(shared: TestClient, repo: Path) -> None:
    before = tree_snapshot(repo)
    response = recalibrate(shared, MODEL, npy_body(STREAM), batch_size=BATCH, dry_run=True)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["version"], report["activated"]) == (None, False)
    assert report["samples_used"] == 40 and report["tail"] == {
        "samples": 4,
        "used": False,
        "policy": report["tail"]["policy"],
    }
    assert [layer["name"] for layer in report["layers"]] == ["bn1", "bn2"]
    assert tree_snapshot(repo) == before


# --- malformed streams -----------------------------------------------------------------------


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
BAD_STREAMS = {
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


SAMPLES_50 = {"recalibration_max_samples": 50}
BYTES_12K = {"recalibration_max_bytes": 12_000}


@pytest.mark.parametrize(
    ("limits", "media", "body", "fragments"),
    [
        (SAMPLES_50, RAW, raw_body(DIGITS[:60]), ["sample 50 at byte 12800", "limit of 50 samples"]),
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
