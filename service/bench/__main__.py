"""``python -m service.bench`` (``bnserve bench``): run the benchmark suite, print the table.

Runs from a clean checkout: the ResNet is built in code, every server gets a private copy of
its model repository in a temporary folder, and everything is removed at the end. The full
suite takes a few minutes on 2 cores; ``--quick`` shortens every measurement.
"""

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from service.bench.cases import CASES
from service.bench.harness import Bench
from service.bench.loadgen import LoadProcess
from service.bench.report import Row, format_markdown, format_text, machine_info, to_json


def _letters(value: str) -> list[str]:
    letters = [part.strip().lower() for part in value.split(",") if part.strip()]
    unknown = [letter for letter in letters if letter not in CASES]
    if unknown or not letters:
        raise argparse.ArgumentTypeError(f"cases are {', '.join(CASES)}; got {value!r}")
    return letters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options, shared by ``python -m service.bench`` and ``bnserve bench``."""
    parser.add_argument("--quick", action="store_true", help="short measurements (about 1 min)")
    parser.add_argument(
        "--only", type=_letters, default=list(CASES), help="comma-separated cases, e.g. a,b"
    )
    parser.add_argument("--out", type=Path, help="also write the table: FILE.json, else Markdown")
    parser.add_argument(
        "--image-size", type=int, default=224, help="ResNet input is 3xNxN (default 224)"
    )


def _run_cases(bench: Bench, letters: list[str]) -> list[Row]:
    rows: list[Row] = []
    for letter in letters:
        started = time.perf_counter()
        try:
            rows += CASES[letter](bench)
        except Exception as exc:  # one broken case must not hide the others' figures
            traceback.print_exc()
            rows.append(
                Row(letter, "FAILED", float("nan"), "", note=f"{type(exc).__name__}: {exc}")
            )
        bench.log(f"case {letter} done in {time.perf_counter() - started:.0f} s")
    return rows


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    machine = machine_info()
    print("bnserve benchmarks: " + ", ".join(f"{k} {v}" for k, v in machine.items()), flush=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bnserve-bench-") as work, LoadProcess() as load:
        bench = Bench(Path(work), load, quick=args.quick, image_size=args.image_size, log=log)
        rows = _run_cases(bench, args.only)
    seconds = time.perf_counter() - started
    print()
    print(format_text(rows))
    print(
        "\nratio = service / baseline. CPU figures are fractions of one core over each load "
        "run; the load generator runs in its own process on the same cores as the server."
    )
    print(f"total run time {seconds:.0f} s{' (--quick)' if args.quick else ''}")
    if args.out is not None:
        if args.out.suffix == ".json":
            text = to_json(rows, machine, seconds)
        else:
            text = format_markdown(rows, machine, seconds)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 1 if any(row.metric == "FAILED" for row in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
