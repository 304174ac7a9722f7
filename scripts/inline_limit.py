"""How the in-loop rule's limit (``BNSERVE_INLINE_CALL_US``) moves the digits hot path.

One ``bnserve serve`` per limit, all up at once, each driven by the benchmark's load
generator with the 1-sample V2 JSON body at 1 and 32 connections, in interleaved rounds
(``service.bench.rounds``); medians over rounds, each round's req/s after them. Limit 0 is
every call on the model's thread. Output committed as ``docs/inline-limit.txt``:

    python scripts/inline_limit.py 0,50,100,200,400 > docs/inline-limit.txt
"""

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from service.bench.bodies import digits_sample, json_request
from service.bench.harness import Bench
from service.bench.loadgen import LoadProcess
from service.bench.models import DIGITS, write_digits_repository
from service.bench.report import machine_info
from service.bench.rounds import Probe, interleave, rate

ROUNDS = 3
SECONDS = 4.0


def main(limits: list[int]) -> None:
    print("inline limit sweep: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()))
    print(f"digits, 1-sample JSON; medians of {ROUNDS} interleaved rounds of {SECONDS:g} s\n")
    body = json_request(DIGITS, digits_sample())
    with tempfile.TemporaryDirectory() as work, LoadProcess() as load, ExitStack() as stack:
        bench = Bench(Path(work), load, log=lambda _: None)
        probes: dict[str, Probe] = {}
        for limit in limits:
            env = {"BNSERVE_INLINE_CALL_US": str(limit)}
            server = stack.enter_context(
                bench.server(f"limit-{limit}", write_digits_repository, env)
            )
            bench.warm(server, body)
            for connections in (1, 32):
                probes[f"{limit} us @{connections}"] = bench.probe(
                    server, body, connections, SECONDS
                )
        rounds = interleave(probes, ROUNDS, lambda _: None)
    print(f"{'limit':>14}  {'p50 ms':>7}  {'p99 ms':>7}  {'req/s':>7}  req/s by round")
    for name in probes:
        figures = rounds.median(name)
        print(
            f"{name:>14}  {figures.p50_ms:7.3f}  {figures.p99_ms:7.2f}  {figures.rate:7,.0f}"
            f"  {rounds.spread(name, rate)}"
        )


if __name__ == "__main__":
    main([int(value) for value in sys.argv[1].split(",")])
