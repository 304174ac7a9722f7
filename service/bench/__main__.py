"""``python -m service.bench`` (``bnserve bench``): run the benchmark suite, print the table.

Runs from a clean checkout: the ResNet is built in code, every server gets a private copy of
its model repository in a temporary folder, and everything is removed at the end. The full
suite takes about 23 minutes on 2 cores, 10 of them the soak (case j); ``--quick`` shortens
every measurement.
"""

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the suite's modules import torch: only ``run`` loads them
    from service.bench.harness import Bench
    from service.bench.report import Row

LETTERS = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k")
"""The cases, in the order they run (``service.bench.cases.CASES``)."""

NOISY_CORES = 0.2
"""Other processes using more than this (cores, on average) make a case's figures suspect."""


SOAK_MINUTES = 10.0
QUICK_SOAK_MINUTES = 0.5


def _minutes(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0:  # NaN included
        raise argparse.ArgumentTypeError(f"minutes must be a positive number; got {value!r}")
    return minutes


def _letters(value: str) -> list[str]:
    letters = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [letter for letter in letters if letter not in LETTERS]
    if unknown or not letters:
        raise argparse.ArgumentTypeError(f"cases are {', '.join(LETTERS)}; got {value!r}")
    return letters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options, shared by ``python -m service.bench`` and ``bnserve bench``."""
    parser.add_argument("--quick", action="store_true", help="short measurements (a few minutes)")
    parser.add_argument(
        "--only", type=_letters, default=list(LETTERS), help="comma-separated cases, e.g. a,b"
    )
    parser.add_argument("--out", type=Path, help="also write the table: FILE.json, else Markdown")
    parser.add_argument(
        "--image-size", type=int, default=224, help="ResNet input is 3xNxN (default 224)"
    )
    parser.add_argument(
        "--soak-minutes",
        type=_minutes,
        help=f"length of the soak, case j (default {SOAK_MINUTES:g}; {QUICK_SOAK_MINUTES:g} "
        "with --quick)",
    )


def _run_cases(bench: "Bench", letters: list[str]) -> tuple[list["Row"], dict[str, float]]:
    """The rows of ``letters``' cases, and the cores other processes used during each."""
    from service.bench.cases import CASES
    from service.bench.cpu import CpuSnapshot
    from service.bench.report import Row

    rows: list[Row] = []
    others: dict[str, float] = {}
    for letter in letters:
        start = CpuSnapshot.take([bench.load.pid])
        try:
            rows += CASES[letter](bench)
        except Exception as exc:  # one broken case must not hide the others' figures
            traceback.print_exc()
            rows.append(
                Row(letter, "FAILED", float("nan"), "", note=f"{type(exc).__name__}: {exc}")
            )
        end = CpuSnapshot.take([bench.load.pid])
        others[letter] = end.others_since(start)
        bench.log(
            f"case {letter} done in {end.wall - start.wall:.0f} s "
            f"(other processes used {others[letter]:.2f} cores meanwhile)"
        )
    return rows, others


def _footer(others: dict[str, float], seconds: float, quick: bool) -> list[str]:
    busy = ", ".join(f"{letter} {cores:.2f}" for letter, cores in others.items())
    lines = [
        "ratio = service / baseline (same run). CPU figures are fractions of one core; the load "
        "generator runs in its own process, on the same cores as the server.",
        f"Cores used by other processes on this machine during each case: {busy}.",
    ]
    if any(cores > NOISY_CORES for cores in others.values()):
        lines.append(
            f"WARNING: other processes used more than {NOISY_CORES} cores during some cases; "
            "their figures are disturbed. Re-run on an idle machine."
        )
    lines.append(f"Total run time {seconds:.0f} s{' (--quick)' if quick else ''}.")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run the cases in ``args.only``, print the table, write ``args.out``; 1 if one failed."""
    from service.bench.harness import Bench
    from service.bench.loadgen import LoadProcess
    from service.bench.report import format_markdown, format_text, machine_info, to_json

    started = time.perf_counter()
    machine = machine_info()
    print("bnserve benchmarks: " + ", ".join(f"{k} {v}" for k, v in machine.items()), flush=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as work, LoadProcess() as load:
        soak = args.soak_minutes or (QUICK_SOAK_MINUTES if args.quick else SOAK_MINUTES)
        bench = Bench(Path(work), load, args.quick, args.image_size, log, soak)
        rows, others = _run_cases(bench, args.only)
    seconds = time.perf_counter() - started
    footer = _footer(others, seconds, args.quick)
    print("\n" + format_text(rows) + "\n\n" + "\n".join(footer))
    if args.out is not None:
        if args.out.suffix == ".json":
            text = to_json(rows, machine, seconds, footer)
        else:
            text = format_markdown(rows, machine, seconds, footer)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 1 if any(row.metric == "FAILED" for row in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
