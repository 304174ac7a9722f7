"""Stream fuzzing: mutated recalibration bodies through the parsers and the endpoint.

Valid npy, raw and ndjson bodies are mutated (bit flips, truncations, insertions, deletions,
poisoned floats, npy header edits, junk ndjson lines). Each mutated body is judged by a
reference that reads what the body says with other code: ``np.load`` for npy (the header
through numpy's own reader, the data by hand), ``np.frombuffer`` for raw, the standard
library's ``json`` for ndjson (numbers as orjson reads them: no NaN/Infinity, integers
beyond 64 bits as floats). The parser must then either accept it with exactly the
reference's samples, or raise ``InvalidInput`` whose message names a position: the exact
byte/sample/line the reference finds first for data problems, the header (or one of its
fields) for npy header problems. Any chunking of the body gives the same outcome.

Through the endpoint: never a 5xx; a rejected body answers 4xx and leaves the repository
byte for byte as it was; an accepted one writes a version of exactly its samples.
"""

import io
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.config import TensorSpec
from service.errors import InvalidInput
from service.streams import make_parser
from tests.conftest import BUNDLED_MODELS, make_client
from tests.recalibration.recalibration_support import (
    NDJSON,
    NPY,
    RAW,
    npy_body,
    recalibrate,
    split_at,
    tree_snapshot,
)

SPEC = TensorSpec(name="input", datatype="FP32", shape=(1, 8, 8))
RECORD = 256
POSITION = re.compile(
    r"\b(byte|sample|line) \d+|\.npy (header|shape|dtype|data is in Fortran)|"
    r"not a \.npy body"
)
PARSERS = settings(max_examples=500, deadline=None)
Outcome = np.ndarray | str  # the samples, or the error message
Expect = np.ndarray | str | None  # samples; a message prefix that must appear; None: any position


# --- mutations ---------------------------------------------------------------------------------

samples = st.builds(
    lambda n, seed: np.random.default_rng(seed).random((n, 1, 8, 8), np.float32),
    st.integers(0, 5),
    st.integers(0, 2**16),
)
POISON = [np.float32(v).tobytes() for v in (np.nan, np.inf, -np.inf)] + [b"\xff\xff\x7f\x7f"]


@st.composite
def mutated(draw: st.DrawFn, body: bytes, start: int = 0) -> bytes:
    """``body`` with 0 to 3 random edits; ``poison`` overwrites a 4-byte value after ``start``."""
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "poison"]))
        at = draw(st.integers(0, max(0, len(body))))
        if kind == "flip" and at < len(body):
            body = body[:at] + bytes([body[at] ^ (1 << draw(st.integers(0, 7)))]) + body[at + 1 :]
        elif kind == "truncate":
            body = body[:at]
        elif kind == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=16)) + body[at:]
        elif kind == "delete":
            body = body[:at] + body[at + draw(st.integers(1, 16)) :]
        elif kind == "poison" and len(body) >= start + 4:
            at = start + 4 * draw(st.integers(0, (len(body) - start) // 4 - 1))
            body = body[:at] + draw(st.sampled_from(POISON)) + body[at + 4 :]
    return body


DESCRS = ["<f4", ">f4", "<f8", "<f2", "<i4", "|u1", "|b1", "<c8", "|O", "<U2", "V8", "<f4x"]


@st.composite
def npy_bodies(draw: st.DrawFn) -> bytes:
    x = draw(samples)
    body = npy_body(x)
    start = body.index(b"\n") + 1
    if draw(st.booleans()):  # a well-formed header saying something else
        descr = draw(st.sampled_from(DESCRS))
        shape = draw(
            st.one_of(st.just((len(x), 1, 8, 8)), st.lists(st.integers(-1, 9), max_size=5))
        )
        header = {"descr": descr, "fortran_order": draw(st.booleans()), "shape": tuple(shape)}
        text = repr(header).encode()
        text += b" " * (-(len(text) + 11) % 64) + b"\n"
        version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x04\x00"]))
        width = 2 if version == b"\x01\x00" else 4
        body = b"\x93NUMPY" + version + len(text).to_bytes(width, "little") + text + body[start:]
        start = 8 + width + len(text)
    return draw(mutated(body, start))


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    return draw(mutated(np.ascontiguousarray(draw(samples), "<f4").tobytes()))


def _line(value: Any) -> bytes:
    return json.dumps(value).encode()


JUNK_LINES = rb'|  |{}|[]|null|true|NaN|1e39|"text"|[1, 2, 3]|{"other": 1}|[[[|[[[0]]]'.split(b"|")
JUNK = st.one_of(
    st.sampled_from([*JUNK_LINES, b"\r", b"\xff\xfe"]),
    st.binary(max_size=12),
    samples.filter(len).map(lambda x: _line(x[0].tolist())),
    samples.filter(len).map(lambda x: _line({"input": x.tolist()})),
    samples.filter(len).map(lambda x: _line((x.astype(np.float64) * 1e39).tolist())),
    samples.filter(len).map(lambda x: _line((x > 0.5).tolist())),
)


@st.composite
def ndjson_bodies(draw: st.DrawFn) -> bytes:
    lines = [_line(sample.tolist()) for sample in draw(samples)]
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(lines)))
        lines[at : at + draw(st.integers(0, 1))] = [draw(JUNK)]
    return draw(mutated(b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))))


# --- references --------------------------------------------------------------------------------


def _records(data: bytes, dtype: np.dtype[Any], start: int) -> tuple[np.ndarray, str | None]:
    """Complete records as float32, and the first non-finite one's location, if any."""
    size = dtype.itemsize * 64
    count = len(data) // size
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.frombuffer(data[: count * size], dtype).reshape(count, 1, 8, 8)
        values = values.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(values.reshape(count, 64)).all(axis=1))
    return values, (f"sample {bad[0]} at byte {start + bad[0] * size}" if bad.size else None)


def raw_expect(body: bytes) -> Expect:
    values, bad = _records(body, np.dtype("<f4"), 0)
    if bad or len(body) % RECORD:
        return bad or f"truncated sample {len(values)} at byte {len(values) * RECORD}"
    return values


def npy_expect(body: bytes) -> Expect:
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0), (3, 0)):
            return None
        read = np.lib.format.read_array_header_1_0
        if version != (1, 0):
            read = np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream, max_header_size=10_000)
    except Exception:  # whatever numpy refuses in a header
        return None
    if fortran or shape[1:] != (1, 8, 8) or len(shape) != 4 or shape[0] < 0:
        return None
    if dtype.kind != "f" or dtype.fields is not None or dtype.subdtype is not None:
        return None
    start, size = stream.tell(), dtype.itemsize * 64
    end = start + shape[0] * size
    if len(body) > end:
        return f"unexpected data at byte {end}"
    values, bad = _records(body[start:], dtype, start)
    if bad or (len(body) - start) % size:
        return bad or f"truncated sample {len(values)} at byte {start + len(values) * size}"
    if len(values) < shape[0]:
        return f"truncated data at byte {len(body)}"
    loaded = np.load(io.BytesIO(body), allow_pickle=False)  # the clean parse, independent
    assert np.array_equal(loaded.astype(np.float32), values)
    return values


def _no_constants(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def _json_int(text: str) -> int | float:
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def _line_samples(value: Any) -> np.ndarray | None:
    if isinstance(value, dict):
        if set(value) != {"input"}:
            return None
        value = value["input"]
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None
    array = array[np.newaxis] if array.shape == (1, 8, 8) else array
    if array.dtype.kind not in "iuf" or array.ndim != 4 or array.shape[1:] != (1, 8, 8):
        return None
    with np.errstate(over="ignore"):
        batch = array.astype(np.float32)
    return batch if len(batch) and np.isfinite(batch).all() else None


def ndjson_expect(body: bytes) -> Expect:
    batches = [np.empty((0, 1, 8, 8), np.float32)]
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line.decode(), parse_int=_json_int, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError):
            return f"line {number}:"
        if (batch := _line_samples(value)) is None:
            return f"line {number}:"
        batches.append(batch)
    return np.concatenate(batches)


# --- the parsers -------------------------------------------------------------------------------


def parse(media: str, chunks: list[bytes]) -> Outcome:
    parser = make_parser(media, [SPEC])
    try:
        parts = [parser.feed(chunk)["input"] for chunk in chunks] + [parser.close()["input"]]
    except InvalidInput as exc:
        return str(exc)
    return np.concatenate(parts)


def check_parser(
    media: str, body: bytes, cuts: list[int], expect: Callable[[bytes], Expect]
) -> None:
    whole, chunked = (
        parse(media, [body]),
        parse(media, split_at(body, [c % (len(body) + 1) for c in cuts])),
    )
    wanted = expect(body)
    event("accepted" if isinstance(whole, np.ndarray) else re.sub(r"\d+|'.*'", "N", whole)[:40])
    if isinstance(wanted, np.ndarray):
        assert isinstance(whole, np.ndarray), f"refused {body!r}: {whole}"
        assert whole.dtype == np.float32 and np.array_equal(whole, wanted)
        assert isinstance(chunked, np.ndarray) and np.array_equal(chunked, wanted)
        return
    assert isinstance(whole, str), f"accepted {body!r}, reference refuses it ({wanted})"
    assert isinstance(chunked, str), f"accepted in chunks, refused whole: {whole}"
    assert POSITION.search(whole) and POSITION.search(chunked), whole
    if wanted is not None:
        assert wanted in whole, f"{whole!r} does not name {wanted!r}"
    if media != NPY:  # npy checks trailing data per chunk, before the chunk's values
        assert chunked == whole


CUTS = st.lists(st.integers(0, 10**6), max_size=4)
# A header that Python's literal_eval refuses goes through numpy's Python 2 fallback, which
# warns (once per process in a server; an error under pytest's -W error).
PY2_HEADER = "ignore:Reading `.npy` or `.npz` file required additional header parsing"


@pytest.mark.filterwarnings(PY2_HEADER)
@PARSERS
@given(npy_bodies(), CUTS)
def test_npy_parser_on_mutated_bodies(body: bytes, cuts: list[int]) -> None:
    check_parser(NPY, body, cuts, npy_expect)


@PARSERS
@given(raw_bodies(), CUTS)
def test_raw_parser_on_mutated_bodies(body: bytes, cuts: list[int]) -> None:
    check_parser(RAW, body, cuts, raw_expect)


@PARSERS
@given(ndjson_bodies(), CUTS)
def test_ndjson_parser_on_mutated_bodies(body: bytes, cuts: list[int]) -> None:
    check_parser(NDJSON, body, cuts, ndjson_expect)


# --- the endpoint ------------------------------------------------------------------------------

EXPECT = {NPY: npy_expect, RAW: raw_expect, NDJSON: ndjson_expect}
BODIES = {NPY: npy_bodies(), RAW: raw_bodies(), NDJSON: ndjson_bodies()}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    repo = tmp_path_factory.mktemp("streams") / "models"
    shutil.copytree(BUNDLED_MODELS / "digits", repo / "digits")
    with make_client(repo) as client:
        yield client, repo / "digits"


@pytest.mark.filterwarnings(PY2_HEADER)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(sorted(BODIES)).flatmap(lambda m: st.tuples(st.just(m), BODIES[m])))
def test_endpoint_never_fails_and_never_writes_a_rejected_body(
    served: tuple[TestClient, Path], case: tuple[str, bytes]
) -> None:
    client, folder = served
    media, body = case
    snapshot = tree_snapshot(folder)
    response = recalibrate(client, "digits", body, media, activate=False)
    assert response.status_code < 500, (media, body[:400], response.text)
    wanted = EXPECT[media](body)
    event(f"{media} {response.status_code}")
    if response.status_code == 200:
        assert isinstance(wanted, np.ndarray), f"accepted, reference refuses it ({wanted})"
        assert response.json()["samples"] == len(wanted)
        written = folder / response.json()["version"]
        assert {"model.onnx", "recalibration.json"} <= {p.name for p in written.iterdir()}
        shutil.rmtree(written)  # back to the one-version repository for the next example
    else:
        message = response.json()["error"]
        assert 400 <= response.status_code < 500
        if isinstance(wanted, np.ndarray):  # well-formed: refused only for what it holds
            huge = len(wanted) > 0 and float(np.abs(wanted).max()) > 1e3
            assert len(wanted) < 2 or (huge and "non-finite activations in batch" in message)
        else:
            assert POSITION.search(message), message
    assert tree_snapshot(folder) == snapshot
