"""The README's adaptation story: one digits server, its traffic shifting under it, the
adaptation loop (``trigger = "activate"``) deciding on its own.

Phases, in requests of 64 samples: clean test split; blur at severity 5 (a covariate shift:
the loop should recalibrate from the traffic and serve the result); then, the blur still on,
samples of one class (3), then of two classes (0, 1) (label shifts: the loop should refuse).
The label-shift phases keep the corruption so that they are label shifts only relative to the
version then serving; clean one-class traffic after it would be both shifts at once, which no
label-free rule can tell apart (see ``adaptation_table.py`` for such streams).

Recorded after every other request: per-layer drift / baseline (``GET .../drift``), accuracy of
the answers against the known labels, the version that served, the loop's alarm and decisions
(``GET .../adaptation``). Writes ``docs/adaptation-story.png`` and ``docs/adaptation-story.md``.

Run: ``python scripts/adaptation_story.py`` (needs ``pip install -e .[docs]`` for matplotlib;
about a minute on 2 cores).
"""

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from adaptation_stream import (
    BATCH,
    Stream,
    adaptation,
    digits_repository,
    drift_ratios,
    reason,
    serve,
    serving,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
COOLDOWN_S = 5.0
"""Short, so that the story fits in a minute; the default is 600 s."""
THRESHOLD = 3.0


@dataclass(frozen=True)
class Phase:
    stream: Stream
    samples: int


RATE = 2048
"""Samples per second sent: steady traffic, not a flood (a decision takes about a second)."""

PHASES = (
    Phase(Stream("clean"), 2048),
    Phase(Stream("blur 5", "blur"), 16_384),
    Phase(Stream("blur 5, class 3 only", "blur", (3,)), 12_288),
    Phase(Stream("blur 5, classes 0 and 1", "blur", (0, 1)), 12_288),
)


@dataclass
class Timeline:
    served: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    version: list[str] = field(default_factory=list)
    ratios: list[tuple[int, dict[str, float | None]]] = field(default_factory=list)
    alarmed: list[tuple[int, bool]] = field(default_factory=list)
    phases: list[tuple[str, int]] = field(default_factory=list)
    decisions: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)


def _run_phase(client: Any, phase: Phase, line: Timeline, start: float) -> None:
    line.phases.append((phase.stream.name, len(line.served) * BATCH))
    sent = 0
    for x, y in phase.stream.batches():
        total = len(line.served) * BATCH
        time.sleep(max(0.0, start + total / RATE - time.monotonic()))
        served = serve(client, x, y)
        sent += BATCH
        line.served.append(len(line.served) * BATCH + BATCH)
        line.seconds.append(time.monotonic() - start)
        line.correct.append(served.correct)
        line.version.append(served.version)
        if len(line.served) % 2 == 0:
            _look(client, line, start)
        if sent >= phase.samples:
            return


def _look(client: Any, line: Timeline, start: float) -> None:
    now = line.served[-1]
    line.ratios.append((now, drift_ratios(client)))
    state = adaptation(client)
    line.alarmed.append((now, bool(state["alarmed"])))
    for decision in state["decisions"][len(line.decisions) :]:
        line.decisions.append((now, time.monotonic() - start, decision))


def run() -> Timeline:
    line = Timeline()
    with tempfile.TemporaryDirectory() as tmp:
        models = digits_repository(Path(tmp), "activate", COOLDOWN_S)
        with serving(models) as client:
            start = time.monotonic()
            for phase in PHASES:
                _run_phase(client, phase, line, start)
    return line


def _accuracy(line: Timeline, first: int, last: int) -> float:
    """Accuracy of the answers to samples ``first`` (exclusive) .. ``last`` (inclusive)."""
    picked = [c for s, c in zip(line.served, line.correct, strict=True) if first < s <= last]
    return sum(picked) / (BATCH * len(picked)) if picked else float("nan")


def _rolling(line: Timeline, window: int = 4) -> list[float]:
    out = []
    for i in range(len(line.correct)):
        chunk = line.correct[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / (BATCH * len(chunk)))
    return out


_COLOURS = {"activated": "tab:green", "rejected": "tab:red", "proposed": "tab:blue"}
_COLOURS["rolled_back"] = "tab:orange"


def plot(line: Timeline, path: Path) -> None:
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=[3, 2])
    layers = list(line.ratios[0][1])
    xs = [at for at, _ in line.ratios]
    for layer in layers:
        ys = [r[layer] if r[layer] is not None else float("nan") for _, r in line.ratios]
        top.plot(xs, ys, label=f"{layer} drift / baseline", linewidth=1.6)
    top.axhline(THRESHOLD, color="black", linestyle="--", linewidth=1)
    top.text(xs[0], THRESHOLD * 1.08, "alarm threshold (3x)", fontsize=9)
    top.set_yscale("log")
    top.set_ylabel("drift / baseline (log)")
    alarm_on = [at for at, on in line.alarmed if on]
    for at in alarm_on:
        top.axvspan(at - 2 * BATCH, at, color="tab:red", alpha=0.06, linewidth=0)
    bottom.plot(line.served, _rolling(line), color="tab:purple", linewidth=1.6,
                label="accuracy served (last 256 samples)")  # fmt: skip
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("accuracy served")
    bottom.set_xlabel("samples served")
    ends = [at for _, at in line.phases[1:]] + [line.served[-1]]
    for (name, begin), end in zip(line.phases, ends, strict=True):
        for axis in (top, bottom):
            axis.axvline(begin, color="grey", linewidth=0.8)
        bottom.text((begin + end) / 2, 0.04, name, ha="center", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.9})  # fmt: skip
    for index, (at, _, decision) in enumerate(line.decisions):
        outcome = decision["outcome"]
        version = decision["version"]
        label = outcome if version is None else f"{outcome} v{version}"
        for axis in (top, bottom):
            axis.axvline(at, color=_COLOURS[outcome], linewidth=2, linestyle=":")
        bottom.text(at, 0.97 - 0.1 * (index % 2), " " + label, color=_COLOURS[outcome], fontsize=10,
                    fontweight="bold", va="top")  # fmt: skip
    top.legend(loc="upper left", fontsize=9)
    bottom.legend(loc="center left", fontsize=9)
    top.set_title("digits, [adaptation] trigger = \"activate\": drift, decisions and accuracy "
                  "(red bands: alarm)")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def summary(line: Timeline) -> str:
    ends = [at for _, at in line.phases[1:]] + [line.served[-1]]
    lines = [
        "# Adaptation story: figures",
        "",
        "Written by `python scripts/adaptation_story.py` (the plot: `adaptation-story.png`).",
        'Digits example, `[adaptation] capture = 2048, trigger = "activate", min_samples = 512,'
        f" cooldown_s = {COOLDOWN_S:g}`, every batch tapped; requests of {BATCH} samples.",
        "",
        "| phase | samples | accuracy before its decision | decision | accuracy after |",
        "|---|---|---|---|---|",
    ]
    for (name, begin), end in zip(line.phases, ends, strict=True):
        inside = [d for d in line.decisions if begin < d[0] <= end]
        cut = inside[0][0] if inside else end
        outcome = ", ".join(
            f"{d['outcome']}" + ("" if d["version"] is None else f" v{d['version']}")
            for _, _, d in inside
        )
        after = f"{_accuracy(line, cut, end):.3f}" if inside else "-"
        lines.append(
            f"| {name} | {begin}-{end} | {_accuracy(line, begin, cut):.3f} "
            f"| {outcome or 'none'} | {after} |"
        )
    shift = line.phases[1][1]
    shift_seconds = next(s for at, s in zip(line.served, line.seconds, strict=True) if at > shift)
    lines += ["", "Decisions (samples served when seen; seconds since the start):", ""]
    for at, seconds, decision in line.decisions:
        lines.append(
            f"- at {at} samples, {seconds:.1f} s: **{decision['outcome']}** (version "
            f"{decision['source_version']} -> {decision['version']}): {reason(decision)}"
        )
    activated = [(at, s) for at, s, d in line.decisions if d["outcome"] == "activated"]
    if activated:
        at, seconds = activated[0]
        lines += [
            "",
            f"From the start of the blur to the activated version: {at - shift} samples, "
            f"{seconds - shift_seconds + 0.0:.1f} s (the loop looks every 0.1 s).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    line = run()
    plot(line, DOCS / "adaptation-story.png")
    text = summary(line)
    (DOCS / "adaptation-story.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
