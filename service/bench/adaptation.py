"""The adaptation loop's benchmarks: what capturing traffic costs a served request, and how
long a shift takes to turn into an activated version.

Repositories are the digits example with ``[adaptation]`` appended; the loop reads ``/drift``
and decides on its own, the benchmark only sends traffic and reads ``/adaptation``.
"""

import functools
import json
import time
import urllib.request
from dataclasses import dataclass

from service.bench.bodies import infer_path
from service.bench.models import DIGITS, write_digits_repository
from service.bench.server import BenchServer
from service.examples import corrupt, load_digits_split

CAPTURE_ONLY = "\n[adaptation]\ncapture = 2048\n"
"""Capture on, decisions off: the cost of case h is the reservoir's alone."""
ACTIVATE = (
    'max_overhead = 1.0\n\n[adaptation]\ncapture = 2048\ntrigger = "activate"\nmin_samples = 512\n'
)
"""Every batch tapped, activate on alarm: case i."""
BATCH = 64

write_capture_repository = functools.partial(write_digits_repository, adaptation=CAPTURE_ONLY)
write_activate_repository = functools.partial(write_digits_repository, adaptation=ACTIVATE)


@dataclass(frozen=True)
class Adapted:
    """Traffic sent from the start of the shift until the loop reported a decision."""

    seconds: float
    samples: int
    outcome: str
    version: int | None


def _json(url: str, body: bytes | None = None) -> dict[str, object]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        document: dict[str, object] = json.loads(response.read())
        return document


def time_to_decision(server: BenchServer, limit: int = 65_536) -> Adapted:
    """Blurred (severity 5) digits test samples, 64 a request on one connection, from the
    first request until ``/adaptation`` lists a decision (checked every other request)."""
    _, _, x_test, _ = load_digits_split()
    blurred = corrupt(x_test, "blur", 5)
    bodies = []
    for start in range(0, len(blurred) - BATCH + 1, BATCH):
        batch = blurred[start : start + BATCH]
        spec = {"name": "input", "datatype": "FP32", "shape": list(batch.shape)}
        bodies.append(json.dumps({"inputs": [spec | {"data": batch.ravel().tolist()}]}).encode())
    started, sent = time.perf_counter(), 0
    while sent < limit:
        _json(server.url + infer_path(DIGITS), bodies[(sent // BATCH) % len(bodies)])
        sent += BATCH
        if sent % (2 * BATCH):
            continue
        decisions = _json(f"{server.url}/v2/models/{DIGITS}/adaptation")["decisions"]
        assert isinstance(decisions, list)
        if decisions:
            last = decisions[0]
            return Adapted(time.perf_counter() - started, sent, last["outcome"], last["version"])
    raise RuntimeError(f"no adaptation decision after {sent} blurred samples")
