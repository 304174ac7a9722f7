"""Plain-text rendering of the server's recalibration report, version list and adaptation
state (pure functions).

Input shapes are those of ``service.recalibration.report.build_report`` (plus ``version`` and
``activated``) and of ``GET /v2/models/{name}/versions`` and ``.../adaptation``. Drift numbers
are printed with four decimals (``format_number``); ``--json`` gives the full precision.
"""

from collections.abc import Mapping, Sequence
from typing import Any

DRIFT_FIELDS = (
    ("drift", "drift (W2 RMS)"),
    ("mean_shift", "mean shift"),
    ("log_var_ratio", "log var ratio"),
)


_COLUMNS_NOTE = "drift of the received samples from the stored statistics, before -> after:"


def format_number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell: the first ``left`` left-aligned, the others right."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _before_after(layer: Mapping[str, Any], field: str) -> str:
    before = layer["drift_before"][field]
    after = layer["drift_after"][field]
    return f"{format_number(before)} -> {format_number(after)}"


def _worst(layer: Mapping[str, Any]) -> str:
    before = layer["drift_before"]
    return f"#{before['worst_channel']} {format_number(before['worst_channel_drift'])}"


def layer_rows(layers: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            str(layer["name"]),
            str(layer["kind"]),
            str(layer["channels"]),
            *(_before_after(layer, field) for field, _ in DRIFT_FIELDS),
            _worst(layer),
        ]
        for layer in layers
    ]


def _versions_line(report: Mapping[str, Any]) -> str:
    source = f"{report['model']}: version {report['source_version']}"
    if report.get("version") is None:
        return f"{source} -> none (dry run, nothing written)"
    if report.get("activated"):
        return f"{source} -> {report['version']} (activated)"
    hint = f"bnserve activate {report['model']} {report['version']}"
    return f"{source} -> {report['version']} (not activated; to serve it: {hint})"


def _samples_line(report: Mapping[str, Any]) -> str:
    tail = report["tail"]
    fate = "used" if tail["used"] else "dropped"
    partial = f"tail of {tail['samples']} {fate}" if tail["samples"] else "no partial tail"
    size = report["parameters"]["batch_size"]
    return (
        f"samples: {report['samples_used']} used of {report['samples']} received, "
        f"{report['batches']} batches of {size}, {partial}; "
        f"{report['duration_seconds']:.3f} s"
    )


def _parameters_line(parameters: Mapping[str, Any]) -> str:
    mode = parameters["mode"]
    extra = (
        f"momentum {parameters['momentum']}" if mode == "ema" else f"prior {parameters['prior']}"
    )
    layers = parameters.get("layers") or "all"
    return f"mode: {mode}, {extra}, layers: {layers}"


def format_report(report: Mapping[str, Any]) -> str:
    """Header lines (versions, samples, parameters), then one table row per layer."""
    headers = ["layer", "kind", "channels", *(title for _, title in DRIFT_FIELDS), "worst before"]
    table = format_table(headers, layer_rows(report["layers"]), left=2)
    header = [_versions_line(report), _samples_line(report), _parameters_line(report["parameters"])]
    return "\n".join([*header, "", _COLUMNS_NOTE, table])


def _provenance_cells(provenance: Mapping[str, Any] | None) -> list[str]:
    if provenance is None:
        return ["-", "-", "-", "-"]
    parameters = provenance.get("parameters") or {}
    return [
        str(provenance.get("source_version", "-")),
        str(provenance.get("created") or "-"),
        str(parameters.get("mode", "-")),
        f"{provenance.get('samples', '-')} in {provenance.get('batches', '-')} batches",
    ]


def format_versions(listing: Mapping[str, Any]) -> str:
    """The model's versions, ``*`` on the active one, with where each recalibrated one came from."""
    rows = [
        [
            str(entry["version"]),
            "*" if entry["active"] else "",
            *_provenance_cells(entry.get("provenance")),
        ]
        for entry in listing["versions"]
    ]
    headers = ["version", "active", "recalibrated from", "created", "mode", "samples"]
    title = f"{listing['name']}: {len(rows)} versions, active {listing['active']}"
    return "\n".join([title, "", format_table(headers, rows, left=len(headers))])


def _adaptation_lines(body: Mapping[str, Any]) -> list[str]:
    settings = body["settings"]
    capture = body["capture"]
    held = (
        "none (capture = 0)"
        if capture is None
        else f"{capture['held']:,} of {capture['capacity']:,} samples held "
        f"({capture['seen']:,} seen)"
    )
    alarm = "ringing" if body["alarmed"] else "quiet"
    watch = body["watching"]
    watching = (
        "no"
        if watch is None
        else f"version {watch['version']} (back to {watch['previous']} unless its drift settles)"
    )
    return [
        f"{body['name']}: serving version {body['version']}, trigger {settings['trigger']}",
        f"capture: {held}",
        f"alarm: {alarm} (drift / baseline >= {settings['threshold']} and drift >= "
        f"{settings['min_drift']}, after {settings['min_samples']} samples)",
        f"deciding: {'yes' if body['deciding'] else 'no'}; watching: {watching}",
    ]


def _label_shift_table(decision: Mapping[str, Any]) -> str | None:
    """Per layer, drift against the stored statistics and against the class mixture."""
    traffic = decision.get("traffic")
    if decision["outcome"] != "rejected" or traffic is None:
        return None
    rows = [
        [
            str(shift["layer"]),
            format_number(shift["drift"]),
            format_number(shift["reweighted"]),
            "yes" if shift["explained"] else "no",
        ]
        for shift in traffic["label_shift"]
    ]
    table = format_table(["layer", "drift", "reweighted by class", "explained"], rows)
    return f"label shift test of the decision at {decision['at']}:\n{table}"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def format_adaptation(body: Mapping[str, Any]) -> str:
    """``GET /v2/models/{name}/adaptation``: the state, then every decision, newest first."""
    decisions = body["decisions"]
    lines = _adaptation_lines(body)
    if not decisions:
        return "\n".join([*lines, "", "no decision yet"])
    rows = [
        [
            str(decision["at"]),
            str(decision["outcome"]),
            f"{decision['source_version']} -> {_or_dash(decision['version'])}",
            "; ".join(decision["reasons"]),
        ]
        for decision in decisions
    ]
    headers = ["decided", "outcome", "versions", "reasons"]
    shifts = [table for table in map(_label_shift_table, decisions) if table is not None]
    return "\n\n".join(["\n".join(lines), format_table(headers, rows, left=len(headers)), *shifts])
