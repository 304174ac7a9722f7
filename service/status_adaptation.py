"""The status page's adaptation part: trigger, captured traffic, alarm, watch, last decisions.

``render_adaptation(report)`` is a pure function of the same ``AdaptationReport`` that
``GET /v2/models/{m}/adaptation`` serializes; every string from it is escaped.
"""

from html import escape

from service.adaptation.decisions import Decision
from service.adaptation.report import AdaptationReport

SHOWN_DECISIONS = 5
_ARROW = "&#8594;"
_OUTCOME_CSS = {"activated": "ok", "proposed": "unknown", "rejected": "watch"}

CSS = """
table.decisions{width:100%}
table.decisions td{font-size:13px;vertical-align:top}
td.reasons{color:#4a5563}
table.label-shift td,table.label-shift th{font-size:12px;padding:0 12px 0 0;border:0}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _state_line(report: AdaptationReport) -> str:
    settings = report["settings"]
    parts = [f'trigger <b class="trigger">{_e(settings.trigger)}</b>']
    capture = report["capture"]
    if capture is None:
        parts.append("no capture")
    else:
        parts.append(
            f'captured <span class="capture">{_count(capture["held"])} of '
            f"{_count(capture['capacity'])}</span> samples ({_count(capture['seen'])} seen)"
        )
    if settings.trigger != "off":
        alarm = '<b class="shifted">ringing</b>' if report["alarmed"] else "quiet"
        parts.append(
            f'alarm <span class="alarm">{alarm}</span> (drift / baseline &#8805; '
            f"{_e(settings.threshold)}, after {_count(settings.min_samples)} samples)"
        )
    if report["deciding"]:
        parts.append('<span class="deciding">deciding</span>')
    watch = report["watching"]
    if watch is not None:
        parts.append(
            f'<span class="watching">watching v{_e(watch.version)}: back to '
            f"v{_e(watch.previous)} unless its drift settles</span>"
        )
    return f'<p class="meta adaptation-state">Adaptation: {" · ".join(parts)}</p>'


def _label_shift(decision: Decision) -> str:
    """Per layer: drift against the stored statistics and against the class mixture, for a
    decision rejected as a label shift."""
    if decision.outcome != "rejected" or decision.traffic is None:
        return ""
    rows = "".join(
        f'<tr class="shift" data-layer="{_e(shift.layer)}"><td>{_e(shift.layer)}</td>'
        f"<td>{shift.drift:.3g}</td><td>{shift.reweighted:.3g}</td>"
        f"<td>{'explained' if shift.explained else 'not explained'}</td></tr>"
        for shift in decision.traffic.label_shift
    )
    head = "<tr><th>layer</th><th>drift</th><th>reweighted by class</th><th></th></tr>"
    return (
        f'<tr class="label-shift"><td></td><td colspan="3">'
        f'<table class="label-shift">{head}{rows}</table></td></tr>'
    )


def _decision_rows(decision: Decision) -> str:
    outcome = decision.outcome
    target = "none" if decision.version is None else f"v{_e(decision.version)}"
    css = _OUTCOME_CSS.get(outcome, "shifted")
    version = "" if decision.version is None else _e(decision.version)
    return (
        f'<tr class="decision" data-outcome="{_e(outcome)}" data-version="{version}">'
        f'<td class="at">{_e(decision.at)}</td><td class="outcome {css}">{_e(outcome)}</td>'
        f'<td class="versions">v{_e(decision.source_version)} {_ARROW} {target}</td>'
        f'<td class="reasons">{"; ".join(_e(reason) for reason in decision.reasons)}</td></tr>'
        f"{_label_shift(decision)}"
    )


def _decisions_table(decisions: list[Decision]) -> str:
    if not decisions:
        return '<p class="meta">No adaptation decision yet.</p>'
    shown = decisions[:SHOWN_DECISIONS]
    more = "" if len(decisions) == len(shown) else f" (last {len(shown)} of {len(decisions)})"
    head = (
        '<colgroup><col style="width:200px"><col style="width:100px"><col style="width:110px">'
        f"<col></colgroup><tr><th>decided{more}</th><th>outcome</th><th>versions</th>"
        "<th>reasons</th></tr>"
    )
    rows = "".join(_decision_rows(decision) for decision in shown)
    return f'<table class="decisions">{head}{rows}</table>'


def render_adaptation(report: AdaptationReport | None) -> str:
    """The model's adaptation part, or nothing when adaptation is not configured."""
    if report is None:
        return ""
    return (
        f'<div class="adaptation">{_state_line(report)}'
        f"{_decisions_table(report['decisions'])}</div>"
    )
