"""Plain-text rendering of the server's recalibration report and version list (pure functions).

Input shapes are those of ``service.recalibration.report.build_report`` (plus ``version`` and
``activated``) and of ``GET /v2/models/{name}/versions``. Drift numbers are printed with four
decimals (``format_number``); ``--json`` gives the full precision.
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
