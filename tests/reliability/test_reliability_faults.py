"""Faults against a real ``bnserve serve``: SIGKILL at random points of recalibrations, and a
full disk.

Kills: each trial starts a recalibration (``activate`` true or false, from whichever version
serves) and SIGKILLs the server at a random moment: anywhere in the request, just after the
hidden temporary version folder appears (the write), or just after the new numbered folder
appears (the activation). Before the restart on the same repository, ``.tmp-*`` leftovers are
planted, a fresh one and one older than the sweep age (one hour), and half the time what the
kill left is aged too. After it: every numbered version folder is complete (model file and
``recalibration.json``) and loads, ``active`` names one of them, the server serves the
previously active version (bit for bit) or, only if the pointer moved, the new one (its
statistics, read from its file, in a torch reference); stale temporaries are gone, fresh ones
stay and are ignored.

Full disk: the repository on a 2 MiB tmpfs (mounting needs root, which CI and the developers'
machines have; elsewhere the test fails, saying so), first with too little space left for a new
version, then with none at all.

Long run (figures for the README)::

    BNSERVE_KILL_TRIALS=20 python -m pytest -q -s \
        tests/reliability/test_reliability_faults.py -k sigkill
"""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.examples.data import CORRUPTIONS, corrupt, load_digits_split
from tests.conftest import BUNDLED_MODELS, LiveServer, RestartableServer, start_server
from tests.helpers import assert_rel_close, infer_body, output_of, sample_inputs
from tests.recalibration.recalibration_support import (
    ADMIN,
    NPY,
    file_statistics,
    module_logits,
    npy_body,
    reference,
    tree_snapshot,
    with_statistics,
)

TRIALS = int(os.environ.get("BNSERVE_KILL_TRIALS", "6"))
MODEL = "digits"
PROBE = sample_inputs(MODEL, 16, seed=3)
X_TEST = load_digits_split()[2]
STALE = 2 * 3600.0  # older than the one-hour sweep age of ``sweep_temporaries``
HOW = ("anywhere", "write", "activation")


def shifted(index: int) -> bytes:
    """Recalibration data number ``index``, different for every index (distinct versions)."""
    rng = np.random.default_rng(index)
    rows = rng.choice(len(X_TEST), 384, replace=False)
    kind = CORRUPTIONS[index % len(CORRUPTIONS)]
    return npy_body(corrupt(X_TEST[rows], kind, 1 + index % 5, seed=index))


def numbered(folder: Path) -> set[int]:
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}


def temporaries(folder: Path) -> set[Path]:
    return set(folder.glob(".tmp-*"))


def pointer(folder: Path) -> int:
    return int((folder / "active").read_text())


def served(live: LiveServer, model: str = MODEL) -> tuple[int, np.ndarray]:
    response = httpx.post(f"{live.url}/v2/models/{model}/infer", content=infer_body(PROBE))
    assert response.status_code == 200, response.text
    return int(response.json()["model_version"]), output_of(response.json())


def expected(folder: Path, version: int) -> np.ndarray:
    module = with_statistics(reference(folder.name), file_statistics(folder / str(version)))
    return module_logits(module, PROBE)


def recalibrate(
    live: LiveServer, body: bytes, activate: bool, model: str = MODEL
) -> httpx.Response:
    return httpx.post(
        f"{live.url}/v2/models/{model}/recalibrate?activate={str(activate).lower()}",
        content=body,
        headers=ADMIN | {"Content-Type": NPY},
        timeout=60,
    )


# --- SIGKILL -----------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestartableServer]:
    repo = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / MODEL, repo / MODEL)
    holder = RestartableServer(repo, tmp_path)
    holder.start()
    try:
        yield holder
    finally:
        holder.stop()


@dataclass(frozen=True)
class Before:
    versions: set[int]
    temps: set[Path]
    active: int
    outputs: np.ndarray


def _upload(live: LiveServer, body: bytes, activate: bool, answered: threading.Event) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server dies under the request
        recalibrate(live, body, activate)
        answered.set()


def _wait_for(condition: Callable[[], bool], thread: threading.Thread) -> None:
    while thread.is_alive() and not condition():
        time.sleep(0.0005)


def kill_during(
    server: RestartableServer,
    how: str,
    span: float,
    rng: random.Random,
    body: bytes,
    activate: bool,
    before: Before,
) -> tuple[float, bool]:
    """Recalibrate and SIGKILL the server when ``how`` says: (seconds from the request,
    whether the response had come)."""
    folder = server.repo / MODEL
    answered = threading.Event()
    thread = threading.Thread(target=_upload, args=(server.live, body, activate, answered))
    started = time.perf_counter()
    thread.start()
    if how == "anywhere":
        time.sleep(rng.uniform(0.0, span))
    elif how == "write":
        _wait_for(lambda: any(p.is_dir() for p in temporaries(folder) - before.temps), thread)
        time.sleep(rng.uniform(0.0, 0.02))
    else:
        _wait_for(lambda: bool(numbered(folder) - before.versions), thread)
        time.sleep(rng.uniform(0.0, 0.03))
    after_response = answered.is_set()
    os.kill(server.live.process.pid, signal.SIGKILL)
    server.live.process.wait(10)
    thread.join(30)
    return time.perf_counter() - started, after_response


def phase_hit(folder: Path, before: Before, activate: bool, after_response: bool) -> str:
    """What the kill interrupted, from what the folder holds now."""
    new = numbered(folder) - before.versions
    left = temporaries(folder) - before.temps
    if after_response:
        return "after the response"
    if new and pointer(folder) in new:
        return "after the pointer moved, before the response"
    if new and any(p.is_file() for p in left):
        return "during the activation: pointer write"
    if new:
        return "during the activation: loading" if activate else "after the write (no activation)"
    if any(p.is_dir() for p in left):
        return "during the version write"
    return "before the write (upload, compute)"


def plant_leftovers(
    folder: Path, before: Before, trial: int, age_real: bool
) -> tuple[set[Path], set[Path]]:
    """Temporaries a crashed writer could leave: (stale ones, fresh ones)."""
    partial = (BUNDLED_MODELS / MODEL / "1" / "model.onnx").read_bytes()[:4096]
    stale, fresh = folder / f".tmp-stale{trial}", folder / f".tmp-fresh{trial}"
    for path in (stale, fresh):
        path.mkdir()
        (path / "model.onnx").write_bytes(partial)
    real = temporaries(folder) - before.temps - {stale, fresh}
    aged = {stale} | (real if age_real else set())
    old = time.time() - STALE
    for path in aged:
        os.utime(path, (old, old))
    return aged, temporaries(folder) - aged


def check_restarted(
    live: LiveServer,
    folder: Path,
    before: Before,
    activate: bool,
    leftovers: tuple[set[Path], set[Path]],
) -> None:
    aged, kept = leftovers
    listing = httpx.get(f"{live.url}/v2/models/{MODEL}/versions").json()
    versions = numbered(folder)
    assert {int(v["version"]) for v in listing["versions"]} == versions
    for version in versions - before.versions:
        files = {p.name for p in (folder / str(version)).iterdir()}
        assert {"model.onnx", "recalibration.json"} <= files, (version, files)
        url = f"{live.url}/v2/models/{MODEL}/versions/{version}/stats"
        assert httpx.get(url).status_code == 200, f"version {version} does not load"
    now = pointer(folder)
    assert listing["active"] == str(now)
    assert now == before.active or (activate and now in versions - before.versions)
    version, outputs = served(live)
    assert version == now
    if now == before.active:
        assert np.array_equal(outputs, before.outputs)
    else:
        assert_rel_close(outputs, expected(folder, now), 1e-5)
    assert not any(path.exists() for path in aged), "stale temporaries were not swept"
    assert all(path.exists() for path in kept), "a fresh temporary was removed"


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_a_consistent_repository(server: RestartableServer) -> None:
    rng = random.Random(20260523)
    folder = server.repo / MODEL
    assert recalibrate(server.live, shifted(0), True).status_code == 200  # warm-up
    started = time.perf_counter()  # a warm recalibration: how long "anywhere" kills may wait
    assert recalibrate(server.live, shifted(1), True).status_code == 200
    span = time.perf_counter() - started
    hits = []
    for trial in range(TRIALS):
        if rng.random() < 0.5:  # roll back or forward first: the source version varies
            target = rng.choice(sorted(numbered(folder)))
            url = f"{server.live.url}/v2/models/{MODEL}/versions/{target}/activate"
            assert httpx.post(url, headers=ADMIN, timeout=60).status_code == 200
        version, outputs = served(server.live)
        before = Before(numbered(folder), temporaries(folder), pointer(folder), outputs)
        assert version == before.active
        how, activate = HOW[trial % len(HOW)], rng.random() < 0.75
        delay, answered = kill_during(server, how, span, rng, shifted(trial + 2), activate, before)
        hits.append((how, activate, f"{delay:.3f}", phase_hit(folder, before, activate, answered)))
        leftovers = plant_leftovers(folder, before, trial, age_real=trial % 2 == 0)
        check_restarted(server.start(), folder, before, activate, leftovers)
    print(f"\n{TRIALS} SIGKILL trials (timing, activate, seconds after the request, phase hit):")
    for hit in hits:
        print("  ", *hit)
    phases = {hit[-1] for hit in hits}
    print(f"phases hit: {sorted(phases)}; versions now {sorted(numbered(folder))}")
    assert len(phases) >= 2, "every kill hit the same phase: the trials tested little"


# --- full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    result = subprocess.run(mount, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=False)


def fill(path: Path, leave: int) -> None:
    """Write ``path`` until only ``leave`` bytes stay free on its filesystem (0: none)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while shutil.disk_usage(path.parent).free - block >= leave:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)


def refused_for_space(response: httpx.Response, model: str) -> None:
    assert response.status_code == 507, response.text
    message = response.json()["error"]
    assert "No space left on device" in message and model in message, message


MODELS = ("digits", "digits_torch")  # the torch writer used to abort the server on ENOSPC


def test_full_disk_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        repo = disk / "models"
        for model in MODELS:
            shutil.copytree(BUNDLED_MODELS / model, repo / model)
        live = start_server(repo, tmp_path / "server.log")
        try:
            before = {model: served(live, model) for model in MODELS}
            snapshot = tree_snapshot(repo)
            fill(disk / "filler", leave=96 * 1024)  # the model file or the reference won't fit
            for model in MODELS:
                refused_for_space(recalibrate(live, shifted(1), True, model), model)
            assert tree_snapshot(repo) == snapshot
            fill(disk / "filler", leave=0)
            for model in MODELS:
                refused_for_space(recalibrate(live, shifted(2), True, model), model)
                url = f"{live.url}/v2/models/{model}/versions/1/activate"
                refused_for_space(httpx.post(url, headers=ADMIN, timeout=60), model)
                assert served(live, model)[0] == 1
                assert np.array_equal(served(live, model)[1], before[model][1])
            assert tree_snapshot(repo) == snapshot
            assert not any(temporaries(repo / model) for model in MODELS)
            (disk / "filler").unlink()
            for model in MODELS:
                response = recalibrate(live, shifted(3), True, model)
                assert response.status_code == 200, response.text
                assert response.json()["version"] == "2"
                version, outputs = served(live, model)
                assert version == 2
                assert_rel_close(outputs, expected(repo / model, 2), 1e-5)
        finally:
            live.stop()
