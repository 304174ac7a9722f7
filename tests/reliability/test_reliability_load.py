"""Inference under load while the serving version keeps changing, against a real server.

``CONNECTIONS`` keep-alive connections send fixed probe requests to ``bnserve serve`` (closed
loop, raw asyncio sockets, every response body kept) for ``SECONDS`` while, in parallel, one
admin client recalibrates on shifted data (``activate=true``) and activates random versions
(rollbacks and roll-forwards), over and over. Afterwards, with the server quiet:

- every request got a 200;
- every response is the output of exactly one complete version: its ``model_version``, and
  its outputs match that version's (a torch reference holding the statistics read from the
  version's own model file, 1e-5 of scale) and no other version's;
- a request sent after an activation answered, and answered before the next change began,
  was served by the version that activation made active.

Long run (figures for the README)::

    BNSERVE_LOAD_SECONDS=30 python -m pytest -q -s tests/reliability/test_reliability_load.py
"""

import asyncio
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from service.bench.loadgen import encode_request
from service.examples.data import CORRUPTIONS, corrupt, load_digits_split
from tests.conftest import BUNDLED_MODELS, LiveServer, start_server
from tests.helpers import infer_body, sample_inputs
from tests.recalibration.recalibration_support import (
    ADMIN,
    NPY,
    file_statistics,
    module_logits,
    npy_body,
    reference,
    with_statistics,
)

SECONDS = float(os.environ.get("BNSERVE_LOAD_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BNSERVE_LOAD_CONNECTIONS", "64"))
MODEL = "digits"
PROBES = [sample_inputs(MODEL, 4, seed=seed) for seed in range(8)]
REQUESTS = [encode_request(f"/v2/models/{MODEL}/infer", infer_body(x)) for x in PROBES]
RESPONSE_TIMEOUT = 30.0
REL = 1e-5
X_TEST = load_digits_split()[2]


@dataclass(frozen=True)
class Exchange:
    probe: int
    sent: int
    """``perf_counter_ns`` before the request was written."""
    done: int
    status: int
    body: bytes


@dataclass(frozen=True)
class Change:
    kind: str
    started: int
    done: int
    status: int
    version: int | None
    detail: str = ""


@dataclass
class Run:
    exchanges: list[Exchange] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def shifted(index: int) -> bytes:
    """Recalibration data number ``index``: a corruption and a random subset of the test split,
    different for every index, so that every version has its own statistics."""
    rng = np.random.default_rng(index)
    kind = CORRUPTIONS[index % len(CORRUPTIONS)]
    rows = rng.choice(len(X_TEST), 384, replace=False)
    return npy_body(corrupt(X_TEST[rows], kind, 1 + (index // len(CORRUPTIONS)) % 5, seed=index))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    start = lower.index(b"\r\ncontent-length:") + 17
    length = int(lower[start : lower.index(b"\r\n", start)])
    return int(head[9:12]), await reader.readexactly(length)


async def connection(port: int, index: int, stop: int, run: Run) -> None:
    probe = index % len(REQUESTS)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        run.errors.append(f"connect: {exc!r}")
        return
    try:
        while (sent := time.perf_counter_ns()) < stop:
            writer.write(REQUESTS[probe])
            status, body = await asyncio.wait_for(read_response(reader), RESPONSE_TIMEOUT)
            run.exchanges.append(Exchange(probe, sent, time.perf_counter_ns(), status, body))
            probe = (probe + 1) % len(REQUESTS)
    except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
        run.errors.append(f"connection {index}: {exc!r}")
    finally:
        writer.close()


async def change(http: httpx.AsyncClient, kind: str, path: str, body: bytes | None) -> Change:
    started = time.perf_counter_ns()
    headers = {"Content-Type": NPY} if body is not None else {}
    response = await http.post(path, content=body, headers=headers)
    version = None
    if response.status_code == 200:
        payload = response.json()
        version = int(payload["version"] if kind == "recalibrate" else payload["active"])
    detail = "" if response.status_code == 200 else response.text
    return Change(kind, started, time.perf_counter_ns(), response.status_code, version, detail)


async def change_versions(url: str, stop: int, run: Run) -> None:
    """Recalibrate (activating the result), then activate two random versions; repeat.

    A short random pause follows each change, so that some requests run entirely between
    two changes (``check_timeline`` needs them)."""
    rng = random.Random(7)
    versions, index = [1], 0
    async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=60.0) as http:
        while time.perf_counter_ns() < stop:
            body, index = shifted(index), index + 1
            made = await change(http, "recalibrate", f"/v2/models/{MODEL}/recalibrate", body)
            run.changes.append(made)
            versions += [made.version] if made.version is not None else []
            for _ in range(2):
                await asyncio.sleep(rng.uniform(0.05, 0.25))
                if time.perf_counter_ns() >= stop:
                    break
                path = f"/v2/models/{MODEL}/versions/{rng.choice(versions)}/activate"
                run.changes.append(await change(http, "activate", path, None))
            await asyncio.sleep(rng.uniform(0.05, 0.25))


async def drive(live: LiveServer) -> Run:
    run = Run()
    started = time.perf_counter_ns()
    stop = started + int(SECONDS * 1e9)
    load = [connection(live.port, i, stop, run) for i in range(CONNECTIONS)]
    await asyncio.gather(change_versions(live.url, stop, run), *load)
    run.seconds = (time.perf_counter_ns() - started) / 1e9
    return run


def expected_outputs(folder: Path) -> dict[int, list[np.ndarray]]:
    """Every version on disk -> the reference outputs for each probe."""
    base, x = reference(MODEL), np.concatenate(PROBES)
    result = {}
    for version_dir in folder.iterdir():
        if version_dir.name.isdigit():
            logits = module_logits(with_statistics(base, file_statistics(version_dir)), x)
            result[int(version_dir.name)] = np.split(logits, len(PROBES))
    return result


def close(actual: np.ndarray, expected: np.ndarray) -> bool:
    error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    return error <= REL * float(np.max(np.abs(expected)))


def check_responses(run: Run, expected: dict[int, list[np.ndarray]]) -> list[int]:
    """Each distinct (probe, body) once: the versions served, in response order."""
    checked: dict[tuple[int, bytes], int] = {}
    for exchange in run.exchanges:
        key = (exchange.probe, exchange.body)
        if key in checked:
            continue
        payload = orjson.loads(exchange.body)
        version = int(payload["model_version"])
        output = payload["outputs"][0]
        logits = np.asarray(output["data"], np.float32).reshape(output["shape"])
        matches = [v for v, outs in expected.items() if close(logits, outs[exchange.probe])]
        assert matches == [version], (
            f"probe {exchange.probe} answered as version {version}; outputs match {matches}"
        )
        checked[key] = version
    return [checked[(e.probe, e.body)] for e in run.exchanges]


def check_timeline(run: Run, served: list[int]) -> int:
    """Requests sent after a change answered and answered before the next change began were
    served by the version that change made active. Returns how many requests were checked."""
    changes = [c for c in run.changes if c.version is not None]
    count = 0
    for current, following in zip(changes, [*changes[1:], None], strict=True):
        end = following.started if following is not None else None
        for exchange, version in zip(run.exchanges, served, strict=True):
            if exchange.sent >= current.done and (end is None or exchange.done <= end):
                assert version == current.version, (current, exchange.probe, version)
                count += 1
    return count


def check_distinct(expected: dict[int, list[np.ndarray]]) -> None:
    """The check above can only tell versions apart if their outputs differ well beyond REL."""
    x = {v: np.concatenate(outs) for v, outs in expected.items()}
    for v in x:
        for w in x:
            if v < w:
                gap = float(np.max(np.abs(x[v] - x[w]))) / float(np.max(np.abs(x[v])))
                assert gap > 100 * REL, f"versions {v} and {w} give the same outputs"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    repo = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / MODEL, repo / MODEL)
    live = start_server(repo, tmp_path / "server.log", BNSERVE_LOG_LEVEL="warning")
    try:
        yield live, repo / MODEL
    finally:
        live.stop()


@pytest.mark.slow
def test_every_response_is_one_complete_version_while_versions_change(
    server: tuple[LiveServer, Path],
) -> None:
    live, folder = server
    run = asyncio.run(drive(live))
    statuses = [e.status for e in run.exchanges]
    failed = [c for c in run.changes if c.status != 200]
    assert not run.errors, run.errors[:5]
    assert not failed, failed[:3]
    assert statuses and all(s == 200 for s in statuses), Counter(statuses)
    expected = expected_outputs(folder)
    check_distinct(expected)
    served = check_responses(run, expected)
    timed = check_timeline(run, served)
    latencies = np.array([e.done - e.sent for e in run.exchanges]) / 1e6
    recalibrations = sum(c.kind == "recalibrate" for c in run.changes)
    print(
        f"\nload with concurrent change: {CONNECTIONS} connections, {run.seconds:.1f} s: "
        f"{len(statuses)} requests, {len(statuses) / run.seconds:.0f}/s, "
        f"p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms, "
        f"max {latencies.max():.1f} ms, failures 0; {recalibrations} recalibrations, "
        f"{len(run.changes) - recalibrations} activations, {len(expected)} versions on disk, "
        f"{len(set(served))} versions served; "
        f"{timed} responses checked against the activation timeline"
    )
    assert len(set(served)) >= 3, "the serving version hardly changed: the test tested little"
    assert timed > len(statuses) // 20, "too few requests fell between two changes"
