"""The status page (``GET /``) as one self-contained HTML document: inline CSS and SVG, no script.

``render_status(models)`` is a pure function of one ``ModelStatus`` per loaded model: the
same data that the versions, drift and adaptation routes return as JSON. A version's
``provenance`` may instead be ``{"error": "..."}`` (an unreadable ``recalibration.json``).
Every string that comes from the data is escaped with ``html.escape``, attributes included.

Each layer's bar is drawn on a linear scale shared by the model's layers: the bar is the drift
(W2 RMS), the tick the no-shift baseline at the same window size. The bar is split by the exact
decomposition of the score: with per-channel ``d`` (standardized mean shift) and ``rho``
(variance ratio), ``drift**2 = RMS(d)**2 + RMS(sqrt(rho) - 1)**2``, so the mean shift accounts
for the share ``mean_shift**2 / drift**2`` of ``drift**2``; the darker segment has that share
of the bar's length, the lighter one the spread's.
"""

import math
from html import escape
from typing import Any, NotRequired, TypedDict

from service.adaptation.report import AdaptationReport
from service.api.versions import VersionEntry
from service.drift.report import LayerDrift, VersionDrift
from service.status_adaptation import CSS as ADAPTATION_CSS
from service.status_adaptation import render_adaptation


class ModelStatus(TypedDict):
    name: str
    platform: str
    version: str
    """The serving version."""
    versions: list[VersionEntry]
    drift: VersionDrift | None
    """The serving version's drift, without per-channel detail; None when not monitored."""
    adaptation: NotRequired[AdaptationReport | None]
    """Absent or None when the model neither adapts nor captures."""


_BAR_WIDTH = 300
_BAR_HEIGHT = 18
_LEVELS = (  # (drift / baseline below this, css class, label)
    (1.5, "ok", "near baseline"),
    (3.0, "watch", "above baseline"),
    (math.inf, "shifted", "shifted"),
)
_DASH = "&#8211;"  # entities, not the characters: the source stays ASCII-clear
_COLOURS = {"ok": "#2e7d32", "watch": "#c77700", "shifted": "#c62828", "unknown": "#546e7a"}

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f5f7;color:#1d2530}
header{background:#1d2530;color:#fff;padding:12px 24px}
header h1{font-size:19px;margin:0;font-weight:600;display:inline}
header span{margin-left:12px;color:#b8c2cc;font-size:13px}
main{padding:12px 24px;max-width:1160px}
section.model{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px 18px 4px;
margin:0 0 10px}
h2{font-size:17px;margin:0 0 2px}
.badge{display:inline-block;font-size:12px;font-weight:500;padding:1px 8px;border-radius:10px;
background:#e8eaed;color:#3c4652;margin-left:6px;vertical-align:2px}
table{border-collapse:collapse;margin:0 0 6px}
table.layers{width:100%;table-layout:fixed}
th{text-align:left;font-weight:600;font-size:11px;color:#6b7785;text-transform:uppercase;
letter-spacing:.03em;border-bottom:1px solid #dde1e6;padding:3px 16px 3px 0}
td{padding:2px 16px 2px 0;border-bottom:1px solid #f0f1f3;vertical-align:middle}
tr:last-child td{border-bottom:0}
table.versions td{font-size:13px;padding:1px 16px 1px 0;border:0}
tr.active td{font-weight:600}
.marker{color:#2e7d32}
.muted{color:#6b7785;font-weight:400}
.meta{font-size:12px;color:#4a5563;margin:2px 0 4px}
td.layer{white-space:nowrap}
td.layer b{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
td.layer span{font-size:12px}
td.ratio{font-size:15px;font-weight:600;white-space:nowrap}
td.ratio small{font-size:11px;font-weight:400;margin-left:6px}
.ok{color:#2e7d32} .watch{color:#c77700} .shifted{color:#c62828} .unknown{color:#546e7a}
td.nums{font-size:12px;line-height:1.3;color:#4a5563;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
.legend{font-size:12px;color:#4a5563;margin:0 0 10px}
.legend svg{vertical-align:-2px;margin:0 3px 0 10px}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float | None, digits: int = 3) -> str:
    return _DASH if value is None else f"{value:.{digits}g}"


def _level(ratio: float | None) -> tuple[str, str]:
    """(css class, label) of a drift / baseline ratio; unknown without a baseline."""
    if ratio is None:
        return "unknown", "no baseline"
    for limit, css, label in _LEVELS:
        if ratio < limit:
            return css, label
    return _LEVELS[-1][1], _LEVELS[-1][2]


def _bar(layer: LayerDrift, scale: float) -> str:
    """The layer's SVG bar: track, drift split into mean-shift and spread shares, baseline tick."""
    w, h = _BAR_WIDTH, _BAR_HEIGHT
    parts = [
        f'<svg class="bar" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="drift of {_e(layer["name"])}">',
        f'<rect x="0" y="4" width="{w}" height="{h - 8}" rx="3" fill="#eef0f3"/>',
    ]
    drift, base = layer["drift"], layer["baseline"]
    if drift is None:
        parts.append(
            f'<text x="8" y="{h / 2 + 4:g}" font-size="11" fill="#6b7785">no traffic yet</text>'
        )
    else:
        colour = _COLOURS[_level(layer["drift_ratio"])[0]]
        length = w * min(drift / scale, 1.0)
        shift = layer["mean_shift"] or 0.0
        share = min(max(shift * shift / (drift * drift), 0.0), 1.0) if drift > 0 else 0.0
        parts += [
            f'<rect class="drift" x="0" y="4" width="{length:.1f}" height="{h - 8}" rx="3" '
            f'fill="{colour}" fill-opacity="0.45"><title>drift {_num(drift, 4)}</title></rect>',
            f'<rect class="mean-shift" x="0" y="4" width="{length * share:.1f}" '
            f'height="{h - 8}" rx="3" fill="{colour}"><title>mean-shift share of drift² '
            f"{share:.0%}</title></rect>",
        ]
    base_drift = None if base is None else base.get("drift")
    if base_drift is not None:
        x = w * min(base_drift / scale, 1.0)
        parts.append(
            f'<line class="baseline" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{h}" stroke="#1d2530" '
            f'stroke-width="2"><title>no-shift baseline {_num(base_drift, 4)}</title></line>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _scale(layers: list[LayerDrift]) -> float:
    """The value at the right end of every bar of a model: its largest drift or baseline."""
    values = [layer["drift"] or 0.0 for layer in layers]
    values += [(layer["baseline"] or {}).get("drift") or 0.0 for layer in layers]
    return max(values, default=0.0) * 1.1 or 1.0


def _samples(value: float | None) -> str:
    if value is None:
        return _DASH
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _components(layer: LayerDrift) -> str:
    """Two lines of numbers: score against baseline and window; the score's components."""
    window = f"window {_samples(layer['window_samples'])} samples"
    if layer["drift"] is None:
        return window
    base = (layer["baseline"] or {}).get("drift")
    worst = layer["worst_channel"]
    worst_text = "" if worst is None else f" · worst ch {_e(worst)}: "
    worst_text += "" if worst is None else _num(layer["worst_channel_drift"])
    return (
        f"drift {_num(layer['drift'])} · baseline {_num(base)} · {window}<br>"
        f"mean shift {_num(layer['mean_shift'])} · log var ratio "
        f"{_num(layer['log_var_ratio'])}{worst_text}"
    )


def _layer_row(layer: LayerDrift, scale: float) -> str:
    drift_ratio = layer["drift_ratio"]
    css, label = _level(drift_ratio)
    if layer["drift"] is None:
        ratio, css, label = _DASH, "unknown", "no traffic yet"
    elif drift_ratio is None:
        ratio = "no baseline"
    else:
        ratio = f"{drift_ratio:.2f}&#215;"
    name = _e(layer["name"])
    return (
        f'<tr class="layer" data-layer="{name}">'
        f'<td class="layer"><b>{name}</b> <span class="muted">{_e(layer["kind"])} · '
        f"{_e(layer['channels'])} ch</span></td>"
        f"<td>{_bar(layer, scale)}</td>"
        f'<td class="ratio {css}">{ratio}<small>{_e(label)}</small></td>'
        f'<td class="nums">{_components(layer)}</td></tr>'
    )


def _drift_section(model: ModelStatus) -> str:
    drift = model["drift"]
    if drift is None:
        return '<p class="meta">Drift monitoring is off for this model.</p>'
    baseline = drift["baseline"]
    meta = (
        f"Drift of v{_e(drift['version'])} · window half-life "
        f"{_samples(drift['half_life'])} samples · {_e(drift['batches_tapped'])} of "
        f"{_e(drift['batches_seen'])} batches tapped "
        f"({_e(drift['samples_tapped'])} of {_e(drift['samples_seen'])} samples)"
        f" · baseline from {'no reference data' if baseline is None else _e(baseline)}"
    )
    layers = drift["layers"]
    scale = _scale(layers)
    drawn = any(layer["drift"] is not None for layer in layers)
    scale_text = f" (0 {_DASH} {_num(scale)})" if drawn else ""
    rows = "".join(_layer_row(layer, scale) for layer in layers)
    head = (
        f'<colgroup><col style="width:180px"><col style="width:{_BAR_WIDTH + 16}px">'
        '<col style="width:150px"><col></colgroup>'
        f"<tr><th>layer</th><th>drift vs baseline{scale_text}</th>"
        "<th>drift / baseline</th><th>components</th></tr>"
    )
    return (
        f'<p class="meta">{meta}</p>{_drift_errors(drift)}'
        f'<table class="layers">{head}{rows}</table>'
    )


def _drift_errors(drift: VersionDrift) -> str:
    """A line on failed taps (tapping backs off after each), or nothing if there were none."""
    errors = drift.get("errors") or 0
    if not errors:
        return ""
    when = drift.get("last_error_at")
    last = "last" if when is None else f"last at {_e(when)}"
    plural = "" if errors == 1 else "s"
    return (
        f'<p class="meta drift-errors shifted">{_e(errors)} drift tap error{plural} (tapping '
        f"backs off and retries) · {last}: {_e(drift.get('last_error'))}</p>"
    )


def _provenance(provenance: dict[str, Any] | None) -> str:
    """What a version is: the original, or recalibrated (from, mode, samples, when)."""
    if provenance is None:
        return '<span class="muted">original</span>'
    if "error" in provenance:
        return f'<span class="muted">unreadable provenance: {_e(provenance["error"])}</span>'
    mode = (provenance.get("parameters") or {}).get("mode")
    parts = (
        f'recalibrated from <span class="source">v{_e(provenance.get("source_version"))}</span>',
        f'mode <span class="mode">{_e(mode)}</span>',
        f'<span class="samples">{_e(provenance.get("samples"))}</span> samples',
        f'<span class="created">{_e(provenance.get("created"))}</span>',
    )
    return " · ".join(parts)


def _versions_table(model: ModelStatus) -> str:
    rows = []
    for entry in model["versions"]:
        active = entry["active"]
        marker = '<span class="marker">● active</span>' if active else ""
        rows.append(
            f'<tr class="version{" active" if active else ""}" '
            f'data-version="{_e(entry["version"])}" data-active="{str(active).lower()}">'
            f"<td>v{_e(entry['version'])}</td><td>{marker}</td>"
            f'<td class="provenance">{_provenance(entry["provenance"])}</td></tr>'
        )
    return f'<table class="versions">{"".join(rows)}</table>'


def _model_section(model: ModelStatus) -> str:
    name = _e(model["name"])
    return (
        f'<section class="model" id="model-{name}" data-model="{name}">'
        f'<h2>{name}<span class="badge">{_e(model.get("platform", "?"))}</span>'
        f'<span class="badge">serving v{_e(model["version"])}</span></h2>'
        f"{_versions_table(model)}{_drift_section(model)}"
        f"{render_adaptation(model.get('adaptation'))}</section>"
    )


def _legend() -> str:
    def swatch(colour: str, opacity: float = 1.0) -> str:
        return (
            f'<svg width="18" height="12"><rect width="18" height="12" rx="2" fill="{colour}" '
            f'fill-opacity="{opacity}"/></svg>'
        )

    tick = '<svg width="8" height="14"><line x1="4" x2="4" y1="0" y2="14" stroke="#1d2530" '
    tick += 'stroke-width="2"/></svg>'
    return (
        '<p class="legend">'
        f"{swatch(_COLOURS['unknown'])}mean-shift share{swatch(_COLOURS['unknown'], 0.45)}"
        f"spread share of drift² (W2 over channels, stored-std units){tick}no-shift "
        "baseline at the window's size · drift / baseline: "
        f"<span style='color:{_COLOURS['ok']}'>&lt; 1.5</span>, "
        f"<span style='color:{_COLOURS['watch']}'>&lt; 3</span>, "
        f"<span style='color:{_COLOURS['shifted']}'>≥ 3</span>, "
        f"<span style='color:{_COLOURS['unknown']}'>no baseline</span></p>"
    )


def render_status(models: list[ModelStatus]) -> str:
    """The whole page for ``models``."""
    sections = "".join(_model_section(model) for model in models)
    if not models:
        sections = '<p class="muted">No model is loaded.</p>'
    count = f"{len(models)} model{'' if len(models) == 1 else 's'} loaded"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bnserve status</title><style>{_CSS}{ADAPTATION_CSS}</style></head><body>"
        f"<header><h1>bnserve</h1><span>{count} · BatchNorm input drift of live traffic "
        "against each version's stored statistics</span></header>"
        f"<main>{_legend()}{sections}</main></body></html>"
    )
