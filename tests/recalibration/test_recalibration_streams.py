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
from tests.recalibration.recalibration_support import (
    ADMIN,
    BODIES,
    F32,
    NDJSON,
    NPY,
    RAW,
    Stats,
    assert_stats_close,
    assert_stats_identical,
    file_statistics,
    ndjson_body,
    npy_body,
    post_chunks,
    raw_body,
    recalibrate,
    reference,
    split_at,
    tree_snapshot,
    update_bn_reference,
)

MODEL, BATCH = "wine", 8  # 13 float32 features: 52 bytes a sample
STREAM = sample_inputs("wine", 44, seed=3)  # 5 full batches and a 4-sample tail


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
    """The statistics of the stream sent in one piece, as npy (checked against update_bn)."""
    stats = chunked_statistics(shared, repo, NPY, [npy_body(STREAM)])
    expected = update_bn_reference(reference(MODEL), STREAM, BATCH)
    assert_stats_close(stats, expected, rtol=1e-5, atol=1e-6)
    return stats


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
