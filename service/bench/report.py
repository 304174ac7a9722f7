"""Benchmark results: one ``Row`` per figure, a machine header, and the text/Markdown/JSON forms.

A row holds the service's figure, the bare baseline measured in the same run (when there is
one), their ratio, and the target it is checked against. Ratios are ``value / baseline``:
above 1 means slower for latencies and faster for rates.
"""

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Target:
    """``value`` (or the ratio, if ``on_ratio``) must be ``<=`` or ``>=`` ``limit``."""

    op: str
    limit: float
    unit: str = ""
    on_ratio: bool = False

    def met(self, value: float, ratio: float | None) -> bool | None:
        checked = ratio if self.on_ratio else value
        if checked is None or math.isnan(checked):
            return None
        return checked <= self.limit if self.op == "<=" else checked >= self.limit

    def __str__(self) -> str:
        unit = "x" if self.on_ratio else f" {self.unit}".rstrip()
        return f"{self.op} {self.limit:g}{unit}"


@dataclass(frozen=True)
class Row:
    case: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _cells(row: Row) -> list[str]:
    ratio = row.ratio
    verdict = {None: "-", True: "met", False: "MISSED"}[row.met]
    baseline = "-" if row.baseline is None else f"{_number(row.baseline)} ({row.baseline_label})"
    return [
        row.case,
        row.metric,
        f"{_number(row.value)} {row.unit}",
        baseline,
        "-" if ratio is None else f"{ratio:.2f}x",
        "-" if row.target is None else str(row.target),
        verdict,
        row.note,
    ]


HEADINGS = ["case", "metric", "service", "baseline (same run)", "ratio", "target", "", "notes"]


def format_text(rows: list[Row]) -> str:
    """A fixed-width table for the terminal."""
    table = [HEADINGS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADINGS) - 1)]
    lines = []
    for line in table:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(
    rows: list[Row], machine: dict[str, str], seconds: float, footer: Sequence[str] = ()
) -> str:
    """The table as GitHub Markdown, the machine description above it, ``footer`` below."""
    described = ", ".join(f"{key} {value}" for key, value in machine.items())
    lines = [f"Machine: {described}. Suite run time: {seconds:.0f} s.", ""]
    lines.append("| " + " | ".join(HEADINGS) + " |")
    lines.append("|" + "---|" * len(HEADINGS))
    for row in rows:
        cells = [cell.replace("|", "\\|") for cell in _cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    if footer:
        lines += ["", *footer]
    return "\n".join(lines) + "\n"


def to_json(
    rows: list[Row], machine: dict[str, str], seconds: float, footer: Sequence[str] = ()
) -> str:
    def clean(value: object) -> object:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    def row_dict(row: Row) -> dict[str, object]:
        values = {key: clean(value) for key, value in asdict(row).items()}
        values["target"] = None if row.target is None else str(row.target)
        return {**values, "ratio": clean(row.ratio), "met": row.met}

    document = {
        "machine": machine,
        "seconds": seconds,
        "rows": [row_dict(r) for r in rows],
        "notes": list(footer),
    }
    return json.dumps(document, indent=2, allow_nan=False, default=str) + "\n"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """CPU model, usable cores, and the versions that the figures depend on."""
    import numpy
    import onnxruntime
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": str(cores),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
