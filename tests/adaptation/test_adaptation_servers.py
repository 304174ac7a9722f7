"""The closed loop in real ``bnserve serve`` processes: two replicas on one repository
activate one candidate, a SIGKILL during an adaptation leaves a consistent repository, and
captured data never reach the log.

References: the files on disk, and each version's model file run by onnxruntime outside the
server. Waits have generous deadlines against hanging only; traffic is bounded by counts.
"""

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt

from service.examples import corrupt
from tests.adaptation.adaptation_support import (
    DEADLINE_S,
    X_TEST,
    adaptation,
    decisions,
    digits_repo,
    feed,
    onnx_logits,
    serve,
    served,
    version_folders,
)
from tests.conftest import LiveServer, RestartableServer, start_server
from tests.helpers import assert_rel_close, infer_body, output_of

FAST = {"BNSERVE_ADAPTATION_INTERVAL": "0.1", "BNSERVE_POLL_INTERVAL": "0.2"}
NOT_ACTIVATED = "not activated: active no longer names version 1"


@contextlib.contextmanager
def running(models: Path, log: Path, **env: str) -> Iterator[httpx.Client]:
    server = start_server(models, log, 60.0, **(FAST | env))
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            yield client
    finally:
        server.stop()


def until_serving(client: httpx.Client, version: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while served(client, X_TEST[:1])[0] != str(version):
        assert time.monotonic() < deadline, f"version {version} not served after {DEADLINE_S} s"
        time.sleep(0.05)


def test_two_replicas_alarming_together_activate_one_candidate(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    blurred = corrupt(X_TEST, "blur", 5)
    with (
        running(models, tmp_path / "a.log") as first,
        running(models, tmp_path / "b.log") as second,
    ):
        feed([first, second], blurred)  # the same traffic to both, chunk by chunk
        decided = [decisions(replica)[0] for replica in (first, second)]
        activated = [d for d in decided if d["outcome"] == "activated"]
        assert len(activated) == 1, decided
        version = activated[0]["version"]
        for replica in (first, second):  # the other replica follows ``active``
            until_serving(replica, version)
        totals = [len(adaptation(replica)["decisions"]) for replica in (first, second)]
    (other,) = (d for d in decided if d["outcome"] != "activated")
    assert other["outcome"] == "proposed" and NOT_ACTIVATED in other["reasons"], other
    assert {version, other["version"]} == {2, 3} and totals == [1, 1]
    assert int((models / "digits" / "active").read_text()) == version
    assert version_folders(models) == [1, 2, 3]


def numbered(models: Path) -> set[int]:
    return set(version_folders(models))


def temporaries(models: Path) -> set[Path]:
    return {p for p in (models / "digits").glob(".tmp-*") if p.is_dir()}


def _send(live: LiveServer, x: npt.NDArray[np.float32], stop: threading.Event) -> None:
    """Serve ``x`` again and again until ``stop`` or the server dies under it."""
    with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=live.url) as client:
        while not stop.is_set():
            serve(client, x)


def _kill_during_adaptation(live: LiveServer, models: Path, kind: str, when: str) -> None:
    """Send corrupted traffic until the server is SIGKILLed at the moment ``when`` says:
    ``deciding`` (the loop reports an alarmed decision under way: label-shift test or
    recalibration), ``write`` (the candidate's hidden temporary folder appears) or ``written``
    (its numbered folder appears: before the compare-and-set, or just after).

    The traffic does not stop at a count: the loop decides on traffic captured after its
    alarm, and on a busy machine the drift taps (hence the alarm) can lag behind a whole
    bounded burst."""
    versions, temps = numbered(models), temporaries(models)
    stop = threading.Event()
    traffic = corrupt(X_TEST, kind, 5)  # type: ignore[arg-type]
    sender = threading.Thread(target=_send, args=(live, traffic, stop))
    sender.start()
    deadline = time.monotonic() + DEADLINE_S
    try:
        with httpx.Client(base_url=live.url, timeout=30.0) as client:
            while not _reached(when, client, models, versions, temps):
                assert time.monotonic() < deadline, (
                    f"no adaptation reached {when!r} in {DEADLINE_S} s"
                )
                time.sleep(0.002)
        os.kill(live.process.pid, signal.SIGKILL)
        live.process.wait(10)
    finally:
        stop.set()
        sender.join(30)


def _reached(
    when: str, client: httpx.Client, models: Path, versions: set[int], temps: set[Path]
) -> bool:
    if when == "deciding":
        report = adaptation(client)
        return bool(report["alarmed"] and report["deciding"])
    if when == "write":
        return bool(temporaries(models) - temps)
    return bool(numbered(models) - versions)


def _check_consistent(live: LiveServer, models: Path) -> None:
    """Only complete versions are listed, ``active`` names one, and it serves what its own
    file computes."""
    listing = httpx.get(f"{live.url}/v2/models/digits/versions").json()
    assert {int(v["version"]) for v in listing["versions"]} == numbered(models)
    for version in sorted(numbered(models) - {1}):
        files = {p.name for p in (models / "digits" / str(version)).iterdir()}
        assert {"model.onnx", "recalibration.json", "reference.npy"} <= files, (version, files)
    active = int((models / "digits" / "active").read_text())
    assert active in numbered(models) and listing["active"] == str(active)
    probe = X_TEST[:16]
    response = httpx.post(f"{live.url}/v2/models/digits/infer", content=infer_body(probe))
    assert response.status_code == 200 and response.json()["model_version"] == str(active)
    expected = onnx_logits(models / "digits" / str(active) / "model.onnx", probe)
    assert_rel_close(output_of(response.json()), expected, 1e-5)


def test_sigkill_during_an_adaptation_leaves_a_consistent_repository(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    server = RestartableServer(models, tmp_path, **FAST)
    phases = []
    try:
        live = server.start()
        for kind, when in (("blur", "deciding"), ("contrast", "write"), ("brightness", "written")):
            versions, temps = numbered(models), temporaries(models)
            _kill_during_adaptation(live, models, kind, when)
            phases.append(
                (when, sorted(numbered(models) - versions), len(temporaries(models) - temps))
            )
            live = server.start()  # on the same repository
            _check_consistent(live, models)
    finally:
        server.stop()
    print("\nkills (when, versions written, temporaries left):", phases)


def _distinctive(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``x`` on a grid of 0.01 moved by 0.000123457: every value prints as a rare string."""
    moved: npt.NDArray[np.float32] = (np.round(x, 2) + 0.000123457).astype(np.float32)
    return moved


def test_captured_data_never_reach_the_log(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    x = _distinctive(corrupt(X_TEST, "blur", 5))
    log = tmp_path / "server.log"
    with running(models, log, BNSERVE_LOG_LEVEL="debug") as client:
        feed([client], x, passes=10)  # a real server's drift taps lag further behind
        decision = decisions(client)[0]
    text = log.read_text()
    assert decision["outcome"] == "activated", decision
    assert "adaptation of digits: activated (version 2)" in text
    values = np.unique(x)
    printed = {s for v in values for s in (str(v), repr(float(v)), f"{v:.6f}", f"{v:.4e}")}
    assert [s for s in printed if s in text] == []
    assert re.search(r"array\(|tensor\(|\[\[|\[ *\d\.\d", text) is None
    # Where captured samples do go: the new version's reference data, rows of the traffic.
    reference = np.load(models / "digits" / "2" / "reference.npy")
    sent = {row.tobytes() for row in x}
    assert len(reference) > 0 and all(row.tobytes() in sent for row in reference)
