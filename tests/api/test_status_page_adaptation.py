"""``GET /``: the adaptation part of a model's section, against a decision the loop made.

One-class traffic of clean digits is a label shift: the loop rejects it and writes nothing.
What the page shows is compared with ``GET /v2/models/digits/adaptation`` and ``/metrics``;
the renderer alone is checked for escaping and for what it shows of each kind of decision.
"""

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families

from service.adaptation.decisions import AlarmFigures, Decision, Outcome, Watch
from service.adaptation.evidence import TrafficFigures
from service.adaptation.label_shift import LayerShift
from service.adaptation.report import AdaptationReport
from service.config import AdaptationConfig, AdaptationTrigger
from service.examples import load_digits_split
from service.status_adaptation import SHOWN_DECISIONS
from service.status_page import render_status
from tests.adaptation.adaptation_support import Client, adaptation, digits_repo, feed
from tests.api.test_status_page import HOSTILE, model_entry, parse, section
from tests.conftest import make_client

X_TEST, Y_TEST = load_digits_split()[2:]
ONE_CLASS = np.concatenate([X_TEST[Y_TEST == 3]] * 8)  # clean, but a single class: label shift


def until_decided(client: Client, x: npt.NDArray[np.float32]) -> dict[str, Any]:
    """Feed ``x`` until the loop has decided; the adaptation JSON then."""
    feed([client], x, chunk=len(x), passes=12)
    return adaptation(client)


def test_page_shows_the_state_and_a_rejected_label_shift(tmp_path: Path) -> None:
    models = digits_repo(tmp_path, "activate")
    with make_client(models, adaptation_interval=0.1) as client:
        body = until_decided(client, ONE_CLASS)
        page = parse(client.get("/").text).root
        metrics = client.get("/metrics").text
    (decision,) = body["decisions"]
    assert decision["outcome"] == "rejected" and decision["version"] is None

    digits = section(page, "digits")
    (state,) = digits.all("p", "adaptation-state")
    capture = body["capture"]
    assert "trigger activate" in state.content
    assert f"captured {capture['held']:,} of {capture['capacity']:,} samples" in state.content
    assert f"alarm {'ringing' if body['alarmed'] else 'quiet'} (" in state.content
    assert "watching" not in state.content  # nothing was activated

    (row,) = digits.all("tr", "decision")
    assert row.attrs["data-outcome"] == "rejected" and row.attrs["data-version"] == ""
    assert row.all("td", "at")[0].content == decision["at"]
    assert row.all("td", "versions")[0].content == "v1 \u2192 none"
    assert row.all("td", "reasons")[0].content == "; ".join(decision["reasons"])
    assert "label shift" in row.all("td", "reasons")[0].content

    shifts = decision["traffic"]["label_shift"]
    shown = {r.attrs["data-layer"]: r for r in digits.all("tr", "shift")}
    assert list(shown) == [shift["layer"] for shift in shifts]
    for shift in shifts:
        cells = [cell.content for cell in shown[shift["layer"]].all("td")]
        figures = [f"{shift['drift']:.3g}", f"{shift['reweighted']:.3g}"]
        explained = "explained" if shift["explained"] else "not explained"
        assert cells == [shift["layer"], *figures, explained]
        assert shift["reweighted"] < shift["drift"]

    counted = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "bnserve_adaptations_total" and s.labels["model"] == "digits"
    }
    assert counted == {"proposed": 0, "activated": 0, "rejected": 1, "rolled_back": 0}


# --- the renderer alone -------------------------------------------------------------------------


def decision(
    outcome: Outcome,
    version: int | None,
    at: str = "2026-01-01T00:00:00+00:00",
    reasons: tuple[str, ...] = ("alarm on bn1",),
    traffic: TrafficFigures | None = None,
) -> Decision:
    alarm = {"bn1": AlarmFigures(0.9, 0.1, 9.0, 600.0, True)}
    return Decision(at, 1, outcome, version, reasons, alarm, traffic)


def traffic(*shifts: LayerShift) -> TrafficFigures:
    return TrafficFigures(600, [0.1] * 10, 1.5, shifts)


def report(decisions: list[Decision], trigger: AdaptationTrigger = "activate") -> AdaptationReport:
    return {
        "settings": AdaptationConfig(capture=2048, trigger=trigger, min_samples=512),
        "capture": {"capacity": 2048, "held": 700, "seen": 1234},
        "alarmed": False,
        "deciding": False,
        "watching": None,
        "decisions": decisions,
    }


def test_every_adaptation_string_is_escaped() -> None:
    shift = LayerShift(HOSTILE, 0.5, 0.1, True)
    rejected = decision("rejected", None, at=HOSTILE, reasons=(HOSTILE,), traffic=traffic(shift))
    page = render_status([model_entry("m", [], adaptation=report([rejected]))])
    assert "<script" not in page and 'alert("x")' not in page
    builder = parse(page)
    assert "script" not in builder.tags
    (row,) = builder.root.all("tr", "shift")
    assert row.attrs["data-layer"] == HOSTILE
    # Shown as text, exactly as given: the time, the reason, the layer.
    (adaptation,) = builder.root.all("div", "adaptation")
    assert adaptation.content.count(HOSTILE) == 3


def test_state_line_watch_and_the_last_decisions_only() -> None:
    shift = LayerShift("bn1", 0.5, 0.45, False)
    older = [decision("proposed", v) for v in range(2, 6)]
    decisions = [
        decision("rolled_back", 1),
        decision("activated", 7, traffic=traffic(shift)),
        decision("rejected", 6, reasons=("holdout",), traffic=traffic(shift)),
        *older,
    ]
    busy = report(decisions) | {"alarmed": True, "deciding": True, "watching": Watch(7, 1)}
    idle = report([], trigger="off") | {"capture": None}
    page = parse(
        render_status(
            [
                model_entry("busy", [], adaptation=busy),
                model_entry("idle", [], adaptation=idle),
                model_entry("plain", []),
            ]
        )
    ).root

    busy_section = section(page, "busy")
    (state,) = busy_section.all("p", "adaptation-state")
    assert "alarm ringing (drift / baseline \u2265 3.0, after 512 samples)" in state.content
    assert "captured 700 of 2,048 samples (1,234 seen)" in state.content
    assert "deciding" in state.content and "watching v7: back to v1" in state.content
    rows = busy_section.all("tr", "decision")
    assert len(rows) == SHOWN_DECISIONS < len(decisions)
    assert f"last {SHOWN_DECISIONS} of {len(decisions)}" in busy_section.content
    shown = [(r.attrs["data-outcome"], r.all("td", "versions")[0].content) for r in rows]
    assert shown[:3] == [
        ("rolled_back", "v1 \u2192 v1"),
        ("activated", "v1 \u2192 v7"),
        ("rejected", "v1 \u2192 v6"),
    ]
    # Label-shift figures only under a rejection (here by the holdout: not explained).
    (figures,) = busy_section.all("tr", "shift")
    assert [c.content for c in figures.all("td")] == ["bn1", "0.5", "0.45", "not explained"]

    idle_section = section(page, "idle")
    assert "trigger off" in idle_section.content and "no capture" in idle_section.content
    assert "alarm" not in idle_section.content
    assert "No adaptation decision yet." in idle_section.content
    assert section(page, "plain").all("div", "adaptation") == []
