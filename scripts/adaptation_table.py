"""The README's adaptation table: what the loop (``trigger = "activate"``) does with each stream.

For each stream, a fresh private copy of the digits example served in-process: the stream is
sent (requests of 64, 2,048 samples/s) until the loop records a decision or ``_BOUND`` samples
went by; then ``_AFTER`` more samples, long enough for an activated version's watch (and a
rollback) to end. Accuracy is that of the answers, against the test labels; "after" is over
the last 1,024 samples, on the version serving then.

Run: ``python scripts/adaptation_table.py > docs/adaptation-table.md`` (about 2 min on 2 cores).
"""

import tempfile
import time
from pathlib import Path
from typing import Any

from adaptation_stream import (
    BATCH,
    Stream,
    adaptation,
    digits_repository,
    reason,
    serve,
    serving,
)

STREAMS = (
    Stream("clean"),
    Stream("contrast 5", "contrast"),
    Stream("blur 5", "blur"),
    Stream("brightness 5", "brightness"),
    Stream("class 3 only, clean", None, (3,)),
    Stream("classes 0 and 1, clean", None, (0, 1)),
    Stream("blur 5 on classes 0 and 1", "blur", (0, 1)),
    Stream("contrast 5 on classes 0 and 1", "contrast", (0, 1)),
)
RATE = 2048  # samples per second
_BOUND = 12_288
_AFTER = 4096
_LAST = 1024


def measure(stream: Stream) -> tuple[float, list[dict[str, Any]], float, str]:
    """Accuracy before the first decision, the decisions, accuracy after, the last version."""
    correct: list[int] = []
    decided_at: int | None = None
    decisions: list[dict[str, Any]] = []
    version = "1"
    with tempfile.TemporaryDirectory() as tmp:
        models = digits_repository(Path(tmp), "activate", 3600.0)
        with serving(models) as client:
            start = time.monotonic()
            for x, y in stream.batches():
                sent = len(correct) * BATCH
                time.sleep(max(0.0, start + sent / RATE - time.monotonic()))
                served = serve(client, x, y)
                correct.append(served.correct)
                version = served.version
                if decided_at is None and len(correct) % 2 == 0:
                    decisions = adaptation(client)["decisions"]
                    decided_at = len(correct) if decisions else None
                end = _BOUND if decided_at is None else decided_at * BATCH + _AFTER
                if sent + BATCH >= end:
                    break
            decisions = adaptation(client)["decisions"]
    cut = decided_at if decided_at is not None else len(correct)
    before = sum(correct[:cut]) / (BATCH * cut)
    last = correct[-_LAST // BATCH :]
    after = sum(last) / (BATCH * len(last))
    return before, decisions, after, version


def main() -> None:
    print("# Adaptation table\n")
    print("Written by `python scripts/adaptation_table.py > docs/adaptation-table.md`: digits,")
    print('`[adaptation] capture = 2048, trigger = "activate", min_samples = 512`, every batch')
    print(f"tapped; a fresh repository per stream, {RATE} samples/s in requests of {BATCH}.")
    print(f"Before: accuracy served until the first decision (or {_BOUND} samples without one);")
    print(f"after: the last {_LAST} samples, {_AFTER} samples after the decision.\n")
    print("| stream | accuracy before | decision | reason | accuracy after | serving |")
    print("|---|---|---|---|---|---|")
    for stream in STREAMS:
        before, decisions, after, version = measure(stream)
        outcome = ", ".join(
            d["outcome"] + ("" if d["version"] is None else f" v{d['version']}") for d in decisions
        )
        reasons = "; ".join(reason(d) for d in decisions) or "-"
        print(
            f"| {stream.name} | {before:.3f} | {outcome or 'none (no alarm)'} | {reasons} "
            f"| {after:.3f} | v{version} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
