"""Cases a and b's one measurement: bnserve against the lean server, the HTTP floor and bare
onnxruntime, on the digits model and its 1-sample V2 JSON body, in interleaved rounds.

Each server is started the same way (``server.ServerProcess``) and warmed, then every round
runs every contender once per load shape (1 and 32 connections), and the rows take medians
over rounds. Whichever of a and b runs first measures both shapes; the other reads the result.
"""

from contextlib import ExitStack
from functools import partial

from service.bench.baseline import ort_latencies
from service.bench.bodies import binary_request, digits_sample, json_request
from service.bench.harness import Bench
from service.bench.loadgen import encode_request
from service.bench.models import DIGITS, digits_model_file, write_digits_repository
from service.bench.report import Row, Target
from service.bench.rounds import Figures, Probe, Rounds, cpu, interleave, p50, p99, rate

BNSERVE = "bnserve, JSON"
BNSERVE_BINARY = "bnserve, binary"
BATCHING_OFF = "bnserve, JSON, batching off"
THREAD_CALLS = "bnserve, JSON, every call on the model thread"
"""``BNSERVE_INLINE_CALL_US=0``: the other path of the cost-based rule (README, Choices)."""
LEAN = "lean server, JSON"
FLOOR = "bnserve, GET /v2/health/live"
LEAN_FLOOR = "lean server, GET /v2/health/live"
BARE = "bare ORT"
SHAPES = (1, 32)
"""Connections of the two load shapes."""


def contender(name: str, connections: int) -> str:
    """The name of ``name`` at ``connections`` in the rounds (bare ORT has one shape)."""
    return name if name == BARE else f"{name} @{connections}"


def _bare(bench: Bench) -> Figures:
    seconds = bench.seconds(2.0, 0.5)
    return Figures.of_calls(ort_latencies(digits_model_file(), digits_sample(), seconds))


def compare_digits(bench: Bench) -> Rounds:
    """The rounds (measured once per suite run, kept on ``bench``)."""
    if bench.digits_rounds is not None:
        return bench.digits_rounds
    sample = digits_sample()
    body, binary = json_request(DIGITS, sample), binary_request(DIGITS, sample)
    live = encode_request("/v2/health/live", None)
    with ExitStack() as stack:
        bnserve = stack.enter_context(bench.server("ab-bnserve", write_digits_repository))
        off = partial(write_digits_repository, batching=False)
        unbatched = stack.enter_context(bench.server("ab-batching-off", off))
        threaded = stack.enter_context(
            bench.server(
                "ab-thread-calls", write_digits_repository, {"BNSERVE_INLINE_CALL_US": "0"}
            )
        )
        lean = stack.enter_context(bench.lean("ab-lean", digits_model_file()))
        for server in (bnserve, unbatched, threaded, lean):
            bench.warm(server, body)
        seconds = bench.seconds(4.0, 1.0)
        probes: dict[str, Probe] = {BARE: partial(_bare, bench)}
        for connections in SHAPES:
            for name, server in ((BNSERVE, bnserve), (THREAD_CALLS, threaded), (LEAN, lean)):
                probes[contender(name, connections)] = bench.probe(
                    server, body, connections, seconds
                )
        for name, server, request in (
            (BNSERVE_BINARY, bnserve, binary),
            (BATCHING_OFF, unbatched, body),
            (FLOOR, bnserve, live),
            (LEAN_FLOOR, lean, live),
        ):
            probes[contender(name, 1)] = bench.probe(server, request, 1, seconds)
        rounds = interleave(probes, bench.rounds, bench.log)
    failures = {name: rounds.median(name).failures for name in rounds.measured}
    if any(failures.values()):
        raise RuntimeError(f"non-200 responses or connection errors: {failures}")
    bench.digits_rounds = rounds
    return rounds


LEAN_LABEL = "lean server"
P50_AT_1 = Target("<=", 0.9, on_ratio=True)
RATE_AT_32 = Target(">=", 1.1, on_ratio=True)
P99_AT_32 = Target("<=", 1.2, on_ratio=True)
BATCHING_AT_1 = Target(">=", 0.9, on_ratio=True)
"""Issue #14's targets against the lean server; batching must not slow a lone client."""


def latency_rows(rounds: Rounds) -> list[Row]:
    """Case a: one connection, sequential requests."""
    json1, floor = contender(BNSERVE, 1), contender(FLOOR, 1)
    lean = (json1, contender(LEAN, 1), LEAN_LABEL)
    return [
        rounds.row("a", "digits p50, 1 conn, JSON", p50, "ms", lean, P50_AT_1),
        rounds.row("a", "digits p99, 1 conn, JSON", p99, "ms", lean),
        rounds.row("a", "digits req/s, 1 conn, JSON", rate, "req/s", lean),
        rounds.row("a", "digits server CPU per request, 1 conn, JSON", cpu, "ms", lean),
        rounds.row("a", "digits p50, 1 conn, JSON, over bare compute", p50, "ms",
             (json1, BARE, f"{BARE} p50")),
        rounds.row("a", "digits p50, 1 conn, JSON, over the HTTP floor", p50, "ms",
             (json1, floor, "GET /v2/health/live p50")),
        rounds.row("a", "digits p50, 1 conn, binary, over bare compute", p50, "ms",
             (contender(BNSERVE_BINARY, 1), BARE, f"{BARE} p50")),
        rounds.row("a", "digits p99, 1 conn, binary, over bare compute", p99, "ms",
             (contender(BNSERVE_BINARY, 1), BARE, f"{BARE} p99")),
        rounds.row("a", "HTTP floor: GET /v2/health/live p50, 1 conn", p50, "ms",
             (floor, contender(LEAN_FLOOR, 1), LEAN_LABEL)),
        rounds.row("a", "digits req/s, 1 conn, JSON, batching on vs off", rate, "req/s",
             (json1, contender(BATCHING_OFF, 1), "batching off"), BATCHING_AT_1),
        rounds.row("a", "digits p50, 1 conn, JSON, calls inline vs on the thread", p50, "ms",
             (json1, contender(THREAD_CALLS, 1), "INLINE_CALL_US=0")),
    ]  # fmt: skip


def throughput_rows(rounds: Rounds) -> list[Row]:
    """Case b: 32 closed-loop connections."""
    pair = (contender(BNSERVE, 32), contender(LEAN, 32), LEAN_LABEL)
    return [
        rounds.row("b", "digits req/s, 32 conn, JSON", rate, "req/s", pair, RATE_AT_32),
        rounds.row("b", "digits p50, 32 conn, JSON", p50, "ms", pair),
        rounds.row("b", "digits p99, 32 conn, JSON", p99, "ms", pair, P99_AT_32),
        rounds.row("b", "digits server CPU per request, 32 conn, JSON", cpu, "ms", pair),
        rounds.row("b", "digits req/s, 32 conn, JSON, over bare 1-sample runs/s", rate, "req/s",
             (pair[0], BARE, f"{BARE} 1-sample runs/s")),
        rounds.row("b", "digits req/s, 32 conn, JSON, calls inline vs on the thread", rate,
             "req/s", (pair[0], contender(THREAD_CALLS, 32), "INLINE_CALL_US=0")),
        rounds.row("b", "digits p99, 32 conn, JSON, calls inline vs on the thread", p99, "ms",
             (pair[0], contender(THREAD_CALLS, 32), "INLINE_CALL_US=0")),
        rounds.row("b", "digits req/s, 32 conn, JSON, calls on the thread, vs lean server",
             rate, "req/s", (contender(THREAD_CALLS, 32), contender(LEAN, 32), LEAN_LABEL)),
    ]  # fmt: skip
