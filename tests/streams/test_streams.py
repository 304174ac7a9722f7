"""Recalibration body parsers: any chunking gives the same samples; every error says where.

References are independent of the parsers: ``np.save``/``write_array`` for npy bodies,
``ndarray.tobytes()`` for raw bodies, ``json.dumps`` for ndjson bodies.
"""

import io
import json
import tracemalloc
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.backends.base import Arrays
from service.config import TensorSpec
from service.errors import InvalidInput, PayloadTooLarge
from service.streams import (
    MEDIA_TYPES,
    NdjsonParser,
    SampleParser,
    UnsupportedMediaType,
    make_parser,
)

NPY, RAW, NDJSON = "application/x-npy", "application/octet-stream", "application/x-ndjson"
X = TensorSpec(name="x", datatype="FP32", shape=(2, 3))
RECORD = 2 * 3 * 4  # bytes of one FP32 sample of X
FAST = settings(max_examples=40, deadline=None)


def npy(array: npt.NDArray[np.generic], version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array)
    else:
        np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def header_length(body: bytes) -> int:
    """Where npy data starts, from numpy's own reader."""
    stream = io.BytesIO(body)
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
        version, np.lib.format.read_array_header_2_0
    )
    read(stream)
    return stream.tell()


def ndjson(samples: Iterable[object], newline: str = "\n") -> bytes:
    return newline.join(json.dumps(sample) for sample in samples).encode()


def split(body: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``body`` in chunks of the given sizes, cycled, with empty chunks in between."""
    chunks, start, i = [], 0, 0
    while start < len(body):
        chunks += [body[start : start + sizes[i % len(sizes)]], b""]
        start, i = start + sizes[i % len(sizes)], i + 1
    return chunks


def parse(
    content_type: str, chunks: Iterable[bytes], inputs: Sequence[TensorSpec] = (X,), **limits: int
) -> Arrays:
    parser = make_parser(content_type, inputs, **limits)
    return run(parser, chunks)


def run(parser: SampleParser, chunks: Iterable[bytes]) -> Arrays:
    batches = [parser.feed(chunk) for chunk in chunks] + [parser.close()]
    for batch in batches:
        for array in batch.values():
            assert array.flags.c_contiguous and array.flags.writeable
    names = batches[0].keys()
    return {name: np.concatenate([batch[name] for batch in batches]) for name in names}


def assert_bit_identical(
    actual: npt.NDArray[np.generic], expected: npt.NDArray[np.generic]
) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def raises(kind: type[Exception], content_type: str, body: bytes, *parts: str, **kw: int) -> None:
    with pytest.raises(kind) as info:
        parse(content_type, [body], (X,), **kw)
    for part in parts:
        assert part in str(info.value)


samples_of_x = st.integers(0, 6).flatmap(
    lambda n: hnp.arrays(
        np.float32,
        (n, 2, 3),
        elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=True),
    )
)
chunk_sizes = st.lists(st.integers(1, 40), min_size=1, max_size=6)


# ---- any chunking gives the same samples --------------------------------------------------


@FAST
@given(
    samples_of_x,
    st.sampled_from([(1, 0), (2, 0), (3, 0)]),
    st.sampled_from(["<f4", ">f4", "<f8", ">f8", "<f2", ">f2"]),
    chunk_sizes,
)
def test_npy_any_chunking_gives_the_array(
    samples: npt.NDArray[np.float32], version: tuple[int, int], dtype: str, sizes: list[int]
) -> None:
    sent = samples.astype(dtype)
    out = parse(NPY, split(npy(sent, version), sizes))
    assert_bit_identical(out["x"], sent.astype("<f4"))


@FAST
@given(samples_of_x, chunk_sizes)
def test_raw_any_chunking_gives_the_array(
    samples: npt.NDArray[np.float32], sizes: list[int]
) -> None:
    assert_bit_identical(parse(RAW, split(samples.tobytes(), sizes))["x"], samples)


@FAST
@given(samples_of_x, st.data())
def test_ndjson_any_split_and_line_style_gives_the_array(
    samples: npt.NDArray[np.float32], data: st.DataObject
) -> None:
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    # Per line: the bare sample or the object form; blank lines between; end newline or not.
    lines = []
    for sample in samples.tolist():
        lines += [""] * data.draw(st.integers(0, 1))
        lines.append(json.dumps({"x": sample} if data.draw(st.booleans()) else sample))
    body = (newline.join(lines) + data.draw(st.sampled_from(["", newline]))).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert_bit_identical(parse(NDJSON, chunks)["x"], samples)


@FAST
@given(samples_of_x)
def test_npy_raw_and_ndjson_of_the_same_samples_agree(samples: npt.NDArray[np.float32]) -> None:
    from_npy = parse(NPY, [npy(samples)])["x"]
    from_raw = parse(RAW, [samples.tobytes()])["x"]
    from_ndjson = parse(NDJSON, [ndjson(samples.tolist())])["x"]
    for out in (from_npy, from_raw, from_ndjson):
        assert_bit_identical(out, samples)


@FAST
@given(st.integers(1, 5), st.data())
def test_ndjson_multi_input_batches_any_split(lines: int, data: st.DataObject) -> None:
    inputs = (
        TensorSpec(name="image", datatype="FP32", shape=(2,)),
        TensorSpec(name="label", datatype="INT64", shape=()),
    )
    counts = [data.draw(st.integers(1, 3)) for _ in range(lines)]
    image = np.arange(2 * sum(counts), dtype=np.float32).reshape(-1, 2) / 7
    label = np.arange(sum(counts), dtype=np.int64) - 2**40
    rows, start = [], 0
    for count in counts:  # a line holds one sample, or a batch of several
        part = slice(start, start + count)
        one = count == 1 and data.draw(st.booleans())
        rows.append(
            {
                "label": int(label[start]) if one else label[part].tolist(),
                "image": image[start].tolist() if one else image[part].tolist(),
            }
        )
        start += count
    body = ndjson(rows)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    out = parse(
        NDJSON, [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)], inputs
    )
    assert_bit_identical(out["image"], image)
    assert_bit_identical(out["label"], label)


def test_samples_complete_exactly_when_their_last_byte_arrives() -> None:
    samples = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(">f8")
    body = npy(samples, (2, 0))
    start, record = header_length(body), 2 * 3 * 8
    parser = make_parser(NPY, [X])
    for i in range(len(body)):
        got = len(parser.feed(body[i : i + 1])["x"])
        fed = i + 1
        assert got == (fed > start and (fed - start) % record == 0)
        assert parser.samples == max(0, fed - start) // record
        assert parser.bytes_read == fed
        assert parser.buffered < max(start, record)
    assert len(parser.close()["x"]) == 0


def test_integer_and_bool_inputs() -> None:
    counts = TensorSpec(name="c", datatype="INT32", shape=(3,))
    values = np.array([[1, -2, 3], [2**31 - 1, 0, -(2**31)]], dtype=np.int32)
    assert_bit_identical(parse(NPY, [npy(values.astype(">i4"))], [counts])["c"], values)
    small = np.array([[0, 255, 7]], dtype=np.uint8)  # converts to INT32 without loss
    assert_bit_identical(parse(NPY, [npy(small)], [counts])["c"], small.astype("<i4"))
    assert_bit_identical(parse(NDJSON, [ndjson(values.tolist())], [counts])["c"], values)
    with pytest.raises(InvalidInput, match="dtype <i8 cannot feed input 'c' of datatype INT32"):
        parse(NPY, [npy(values.astype(np.int64))], [counts])
    mask = TensorSpec(name="m", datatype="BOOL", shape=(2,))
    assert parse(RAW, [b"\x00\x01\x01\x00"], [mask])["m"].tolist() == [[False, True], [True, False]]
    with pytest.raises(InvalidInput, match=r"sample 1 at byte 2: byte 3 is not a bool"):
        parse(RAW, [b"\x00\x01\x01\x02"], [mask])


# ---- errors say what and where ------------------------------------------------------------

SAMPLES = np.random.default_rng(1).normal(size=(5, 2, 3)).astype(np.float32)
BODY = npy(SAMPLES)
START = header_length(BODY)


@pytest.mark.parametrize("cut", [0, 3, 7, 9, START - 1])
def test_npy_truncated_header(cut: int) -> None:
    raises(InvalidInput, NPY, BODY[:cut], f"truncated .npy header at byte {cut}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"PK\x03\x04" + BODY[4:], "not a .npy body"),
        (b"\x93NUMPZ", "not a .npy body"),
        (b"\x93NUMPY\x04\x00" + BODY[8:], "unsupported .npy version 4.0"),
        (b"\x93NUMPY\x02\x00\x11\x27\x00\x00", "header of 10001 bytes is over 10000"),
        (b"\x93NUMPY\x01\x00\x07\x00[1, 2]\n", "invalid .npy header: Header is not a dictionary"),
        (b"\x93NUMPY\x01\x00\x06\x00{'a':\n", "invalid .npy header"),
    ],
)
def test_npy_bad_prefix_or_header(body: bytes, message: str) -> None:
    raises(InvalidInput, NPY, body, message)


def test_npy_bad_magic_fails_as_soon_as_it_arrives() -> None:
    parser = make_parser(NPY, [X])
    parser.feed(b"\x93NUM")
    with pytest.raises(InvalidInput, match=r"not a \.npy body"):
        parser.feed(b"X")


@pytest.mark.parametrize(
    "array",
    [SAMPLES.reshape(5, 6), SAMPLES.reshape(-1), SAMPLES[:, :1], SAMPLES[0], SAMPLES[None]],
)
def test_npy_wrong_shape(array: npt.NDArray[np.float32]) -> None:
    raises(InvalidInput, NPY, npy(array), f".npy shape {array.shape}", "expected (n, 2, 3)")


def test_npy_negative_count() -> None:
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (-1, 2, 3)}
    np.lib.format.write_array_header_1_0(buffer, header)
    raises(InvalidInput, NPY, buffer.getvalue(), ".npy shape (-1, 2, 3)", "expected (n, 2, 3)")


def test_npy_fortran_order() -> None:
    raises(InvalidInput, NPY, npy(np.asfortranarray(SAMPLES)), "Fortran order")


@pytest.mark.parametrize("dtype", ["|i1", "<i4", "<U3", "<c8", "|b1"])
def test_npy_wrong_dtype(dtype: str) -> None:
    body = npy(np.zeros((2, 2, 3), dtype=dtype))
    raises(InvalidInput, NPY, body, f".npy dtype {dtype}", "datatype FP32")


def test_npy_structured_dtype() -> None:
    array = np.zeros((2, 2, 3), dtype=[("a", "<f4")])
    raises(InvalidInput, NPY, npy(array), ".npy dtype", "datatype FP32")


def test_npy_truncated_final_sample_names_offset() -> None:
    offset = START + 4 * RECORD
    message = f"truncated sample 4 at byte {offset}: 19 of 24 bytes, 5 missing"
    raises(InvalidInput, NPY, BODY[:-5], message)


def test_npy_missing_whole_samples() -> None:
    body = BODY[: START + 3 * RECORD]
    raises(InvalidInput, NPY, body, f"truncated data at byte {len(body)}", "declares 5 samples")


def test_npy_trailing_bytes_name_offset() -> None:
    raises(InvalidInput, NPY, BODY + b"\n", f"unexpected data at byte {START + 5 * RECORD}")


def test_raw_truncated_final_sample_names_offset_and_missing_bytes() -> None:
    raw = SAMPLES.tobytes()[:-10]
    raises(InvalidInput, RAW, raw, "truncated sample 4 at byte 96: 14 of 24 bytes, 10 missing")


@pytest.mark.parametrize(
    ("value", "reason"),
    [(np.nan, "is NaN"), (-np.inf, "is infinite"), (1e39, "(1e+39) overflows FP32")],
)
def test_non_finite_value_names_sample_and_offset(value: float, reason: str) -> None:
    samples = SAMPLES.astype(np.float64)
    samples[3, 1, 2] = value
    samples[4, 0, 0] = np.nan  # only the first is reported
    element = 1 * 3 + 2  # [1, 2] in a (2, 3) sample
    body = npy(samples)
    start = header_length(body)
    offset = start + 3 * 48
    where = f"sample 3 at byte {offset}: value [1, 2] {reason} (byte {offset + element * 8})"
    raises(InvalidInput, NPY, body, where)
    if not np.isfinite(value):  # raw FP32 cannot hold 1e39
        raw = samples.astype(np.float32).tobytes()
        raises(
            InvalidInput, RAW, raw, f"sample 3 at byte 72: value [1, 2] {reason} (byte {72 + 20})"
        )


def test_non_finite_found_across_chunk_boundaries() -> None:
    samples = SAMPLES.copy()
    samples[2, 0, 1] = np.inf
    with pytest.raises(InvalidInput, match=r"^sample 2 at byte 48: value \[0, 1\] is infinite"):
        parse(RAW, split(samples.tobytes(), [5, 13]))


def test_ndjson_errors_name_the_line() -> None:
    good = json.dumps(SAMPLES[0].tolist())
    cases = {
        "[[1, 2, 3], [4, 5, 6]": "invalid JSON at column",
        "[[1, 2, 3], [4, 5]]": "not a regular nested array",
        "[[1, 2], [4, 5]]": "expected shape [2, 3], got [2, 2]",
        "[1, 2, 3, 4, 5, 6]": "expected shape [2, 3], got [6]",
        "[]": "expected shape [2, 3], got [0]",
        '[[1, 2, 3], [4, 5, "6"]]': "expected numbers for FP32, got strings",
        "[[1, 2, 3], [4, 5, null]]": "expected numbers for FP32, got nulls",
        "[[true, false, true], [true, true, true]]": "expected numbers for FP32, got booleans",
        "[[1, 2, 3], [4, 5, 1e39]]": "value [1, 2] (1e+39) overflows FP32",
        '{"y": [[1, 2, 3], [4, 5, 6]]}': "unknown input 'y'; inputs: 'x'",
        "{}": "missing input 'x'",
    }
    for line, message in cases.items():
        body = f"{good}\r\n\r\n{good}\r\n{line}\r\n{good}".encode()
        with pytest.raises(InvalidInput, match=r"^line 4: ") as info:
            parse(NDJSON, split(body, [7, 3]))
        assert message in str(info.value)


def test_ndjson_multi_input_errors() -> None:
    inputs = (
        TensorSpec(name="a", datatype="FP32", shape=(2,)),
        TensorSpec(name="b", datatype="INT8", shape=()),
    )
    good = '{"a": [1, 2], "b": 3}\n'
    cases = {
        '{"a": [1, 2]}': "line 2: missing input 'b'",
        '{"a": [1, 2], "b": 3, "c": 4}': "line 2: unknown input 'c'; inputs: 'a', 'b'",
        "[1, 2]": "line 2: expected an object with the inputs 'a', 'b'",
        '{"a": [1, 2], "b": 300}': "line 2: input 'b': value 300 is out of range for INT8",
        '{"a": [1, 2], "b": 1.5}': "line 2: input 'b': expected integers for INT8",
        '{"a": [1, 2], "b": [1, 2]}': "line 2: inputs with different sample counts: a 1, b 2",
        '{"a": [1], "b": 1}': "line 2: input 'a': expected shape [2], got [1]",
    }
    for line, message in cases.items():
        with pytest.raises(InvalidInput) as info:
            parse(NDJSON, [(good + line).encode()], inputs)
        assert str(info.value).startswith(message)


def test_ndjson_line_too_long() -> None:
    parser = NdjsonParser([X], max_line_bytes=60)
    good = json.dumps([[1, 2, 3], [4, 5, 6]]).encode()
    long = b"[" + b" " * 60 + b"]"
    with pytest.raises(InvalidInput, match=r"^line 2: longer than the limit of 60 bytes"):
        run(parser, [good + b"\n" + long + b"\n"])
    parser = NdjsonParser([X], max_line_bytes=60)
    with pytest.raises(InvalidInput, match=r"^line 2: longer than the limit of 60 bytes"):
        run(parser, split(good + b"\n" + long, [9]))  # never completed: fails while pending
    assert parser.buffered <= 60 + 9


def test_max_samples() -> None:
    raw = SAMPLES.tobytes()
    assert len(parse(RAW, [raw], max_samples=5)["x"]) == 5
    raises(
        PayloadTooLarge, RAW, raw, "sample 4 at byte 96: more than the limit of 4", max_samples=4
    )
    raises(PayloadTooLarge, NPY, BODY, "declares 5 samples, over the limit of 4", max_samples=4)
    with pytest.raises(PayloadTooLarge, match="declares 5 samples"):  # before any data
        make_parser(NPY, [X], max_samples=4).feed(BODY[:START])
    lines = ndjson([SAMPLES[0].tolist(), SAMPLES[1:3].tolist(), SAMPLES[3].tolist()])
    raises(PayloadTooLarge, NDJSON, lines, "line 2: more than the limit of 2", max_samples=2)
    assert len(parse(NDJSON, [lines], max_samples=4)["x"]) == 4


def test_max_bytes() -> None:
    raw = SAMPLES.tobytes()
    assert len(parse(RAW, [raw], max_bytes=len(raw))["x"]) == 5
    raises(PayloadTooLarge, RAW, raw, "larger than the limit of 119 bytes", max_bytes=119)
    with pytest.raises(PayloadTooLarge):  # the header's size says it already
        make_parser(NPY, [X], max_bytes=len(BODY) - 1).feed(BODY[:START])
    raises(PayloadTooLarge, NPY, BODY, "limit of 8 bytes", max_bytes=8)
    raises(PayloadTooLarge, NDJSON, ndjson(SAMPLES.tolist()), "limit of 10 bytes", max_bytes=10)


@pytest.mark.parametrize("content_type", ["", "text/csv", "application/json", "application/npy"])
def test_unsupported_content_type_lists_the_supported(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        make_parser(content_type, [X])
    assert isinstance(info.value, InvalidInput)
    assert all(media in str(info.value) for media in MEDIA_TYPES)


def test_content_type_parameters_and_case_are_ignored() -> None:
    out = parse("Application/X-NPY; charset=binary", [BODY])
    assert_bit_identical(out["x"], SAMPLES)
    assert_bit_identical(
        parse(" application/x-ndjson;charset=utf-8", [ndjson(SAMPLES.tolist())])["x"], SAMPLES
    )


def test_binary_formats_need_a_single_input_model() -> None:
    inputs = (X, TensorSpec(name="y", datatype="FP32", shape=(1,)))
    for content_type in (NPY, RAW):
        with pytest.raises(InvalidInput, match=r"single-input model.*'x', 'y'"):
            make_parser(content_type, inputs)


# ---- memory -------------------------------------------------------------------------------


def test_streaming_200_mb_keeps_the_carry_under_one_sample() -> None:
    spec = TensorSpec(name="x", datatype="FP32", shape=(3, 7, 11))
    record = 3 * 7 * 11 * 4  # 1 MiB is not a whole number of samples: the carry varies
    chunk = np.random.default_rng(2).normal(size=2**18).astype(np.float32).tobytes()
    parser = make_parser(RAW, [spec])
    carries, samples = set(), 0
    tracemalloc.start()
    try:
        for _ in range(200):
            samples += len(parser.feed(chunk)["x"])
            assert parser.buffered < record
            carries.add(parser.buffered)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(carries) > 1
    assert samples == parser.samples == 200 * len(chunk) // record
    assert parser.bytes_read == 200 * len(chunk)
    assert peak < 4 * len(chunk)  # O(one chunk), not O(stream)
