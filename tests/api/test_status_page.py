"""``GET /``: the status page lists every model, its versions and per-layer drift bars.

The page is parsed with the standard library's ``HTMLParser`` into a small element tree; the
expected content comes from the JSON routes (versions, stored statistics, drift) and from the
repository on disk, never from the renderer.
"""

import math
import re
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.examples.data import corrupt, load_digits_split
from service.status_page import render_status
from tests.conftest import BUNDLED_MODELS
from tests.helpers import infer_body, settled_drift
from tests.recalibration.recalibration_support import ADMIN, NPY, npy_body

_VOID = {"meta", "br", "col", "img", "input", "link", "hr", "wbr", "source"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list["Element"] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # this element's and its descendants' text

    def all(self, tag: str, cls: str | None = None) -> list["Element"]:
        found = []
        for child in self.children:
            if child.tag == tag and (cls is None or cls in child.attrs.get("class", "").split()):
                found.append(child)
            found.extend(child.all(tag, cls))
        return found

    @property
    def content(self) -> str:
        return " ".join("".join(self.text).split())


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.tags.append(tag)
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert tag in [e.tag for e in self.stack], f"</{tag}> closes nothing"
        while self.stack.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element.text.append(data)


def parse(page: str) -> TreeBuilder:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder


def section(document: Element, model: str) -> Element:
    (found,) = [s for s in document.all("section", "model") if s.attrs["data-model"] == model]
    return found


# --- the served page --------------------------------------------------------------------------


def repository_tapping_every_batch(tmp_path: Path, models: tuple[str, ...] = ("digits",)) -> Path:
    """A copy of the bundled repository in which ``models`` tap every batch, in order
    (``[drift] max_overhead = 1.0``): their drift then depends on the traffic alone."""
    root = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS, root)
    for model in models:
        config = root / model / "config.toml"
        text = config.read_text()
        assert "[drift]\n" in text and "max_overhead" not in text
        config.write_text(text.replace("[drift]\n", "[drift]\nmax_overhead = 1.0\n"))
    return root


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """Overrides conftest's."""
    return repository_tapping_every_batch(tmp_path)


def recalibrate_and_serve(client: TestClient | httpx.Client) -> dict[str, Any]:
    """Recalibrate digits on 256 contrast-shifted images (version 2, activated), serve it 4
    batches of 32 of them, and return its settled drift JSON."""
    shifted = corrupt(load_digits_split()[2][:256], "contrast", 5)
    headers = ADMIN | {"Content-Type": NPY}
    response = client.post(
        "/v2/models/digits/recalibrate", content=npy_body(shifted), headers=headers
    )
    assert response.status_code == 200, response.text
    for start in range(0, 128, 32):
        body = infer_body(shifted[start : start + 32])
        assert client.post("/v2/models/digits/infer", content=body).status_code == 200
    drift = settled_drift(client, "digits")
    assert drift["version"] == "2" and drift["batches_tapped"] == 4
    return drift


def test_page_shows_models_versions_and_a_drift_bar_per_layer(
    client: TestClient, model_repo: Path
) -> None:
    drift = recalibrate_and_serve(client)

    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    document = parse(response.text).root

    models = sorted(p.parent.name for p in model_repo.glob("*/config.toml"))
    assert sorted(s.attrs["data-model"] for s in document.all("section", "model")) == models
    for model in models:
        page = section(document, model)
        stats = client.get(f"/v2/models/{model}/stats").json()["layers"]
        monitored = [s["name"] for s in stats if s["running_mean"] and not s["batch_independent"]]
        rows = page.all("tr", "layer")
        assert [row.attrs["data-layer"] for row in rows] == monitored
        for row in rows:
            assert len(row.all("svg", "bar")) == 1
        listing = client.get(f"/v2/models/{model}/versions").json()["versions"]
        shown = [
            (r.attrs["data-version"], r.attrs["data-active"]) for r in page.all("tr", "version")
        ]
        assert shown == [(v["version"], str(v["active"]).lower()) for v in listing]
        for row in page.all("tr", "version"):
            assert ("● active" in row.content) == (row.attrs["data-active"] == "true")

    digits = section(document, "digits")
    v1, v2 = digits.all("tr", "version")
    assert "original" in v1.content and "active" not in v1.content
    assert v2.attrs["data-active"] == "true"  # the recalibration activated its version
    assert "recalibrated from v1" in v2.content and "mode cumulative" in v2.content
    assert "256 samples" in v2.content
    for row, layer in zip(digits.all("tr", "layer"), drift["layers"], strict=True):
        assert_bar_matches(row, layer)
    for row in section(document, "wine").all("tr", "layer"):  # no traffic: no bar, no ratio
        assert row.all("rect", "drift") == [] and "no traffic yet" in row.content


def assert_bar_matches(row: Element, layer: dict[str, Any]) -> None:
    """Bar length / tick position = drift / baseline; ratio text = the JSON's ratio."""
    (bar,) = row.all("rect", "drift")
    (tick,) = row.all("line", "baseline")
    ratio = layer["drift"] / layer["baseline"]["drift"]
    drawn = float(bar.attrs["width"]) / float(tick.attrs["x1"])
    # Both are rounded to 0.1 px; a bar clipped at the right end would break the ratio.
    assert drawn == pytest.approx(ratio, rel=0.02, abs=0.1 / float(tick.attrs["x1"]))
    assert layer["drift_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert f"{layer['drift_ratio']:.2f}\u00d7" in row.content
    window = re.search(r"window ([\d,.]+) samples", row.content)
    assert window is not None
    assert float(window[1].replace(",", "")) == pytest.approx(layer["window_samples"], rel=5e-3)


# --- the renderer alone -------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>&amp;\'"'


def layer_entry(name: str, **scores: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "kind": "BatchNorm", "channels": 4}
    entry |= {"window_samples": 0.0, "drift": None, "mean_shift": None, "log_var_ratio": None}
    entry |= {"worst_channel": None, "worst_channel_drift": None, "baseline": None}
    return entry | {"drift_ratio": None} | scores


def model_entry(name: str, layers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    drift = {"version": "1", "half_life": 64.0, "batches_seen": 3, "batches_tapped": 3}
    drift |= {"samples_seen": 30, "samples_tapped": 30, "baseline": None, "layers": layers}
    versions = [{"version": "1", "active": True, "provenance": None}]
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "version": "1",
        "versions": versions,
        "drift": drift,
    } | extra


def test_every_string_from_the_data_is_escaped() -> None:
    provenance = {
        "source_version": HOSTILE,
        "created": HOSTILE,
        "samples": HOSTILE,
        "parameters": {"mode": HOSTILE},
    }
    versions = [
        {"version": HOSTILE, "active": True, "provenance": provenance},
        {"version": "3", "active": False, "provenance": {"error": HOSTILE}},
    ]
    layer = layer_entry(HOSTILE, kind=HOSTILE, channels=HOSTILE)
    model = model_entry(HOSTILE, [layer], platform=HOSTILE, version=HOSTILE, versions=versions)
    model["drift"]["baseline"] = HOSTILE
    page = render_status([model])
    assert "<script" not in page and 'alert("x")' not in page
    builder = parse(page)
    assert "script" not in builder.tags
    (found,) = builder.root.all("section", "model")
    assert found.attrs["data-model"] == HOSTILE  # attribute values round-trip exactly
    assert found.all("tr", "layer")[0].attrs["data-layer"] == HOSTILE
    assert found.all("tr", "version")[0].attrs["data-version"] == HOSTILE
    # Every place a string is shown: the text comes back exactly as given, never as markup.
    assert found.content.count(HOSTILE) == 13


def test_bars_split_drift_by_its_mean_shift_share_and_say_when_data_is_missing() -> None:
    drift, shift, base = 0.5, 0.3, 0.125
    layers = [
        layer_entry(
            "shifted",
            window_samples=40.0,
            drift=drift,
            mean_shift=shift,
            log_var_ratio=0.8,
            worst_channel=2,
            worst_channel_drift=0.9,
            baseline={"drift": base, "mean_shift": 0.1, "log_var_ratio": 0.1},
            drift_ratio=drift / base,
        ),
        layer_entry(
            "unreferenced", window_samples=40.0, drift=0.1, mean_shift=0.0, log_var_ratio=0.2
        ),
        layer_entry("idle"),
    ]
    document = parse(render_status([model_entry("m", layers), model_entry("off", [], drift=None)]))
    shifted, unreferenced, idle = document.root.all("tr", "layer")
    bar = float(shifted.all("rect", "drift")[0].attrs["width"])
    mean_part = float(shifted.all("rect", "mean-shift")[0].attrs["width"])
    # drift^2 = mean_shift^2 + spread^2 exactly, so the mean-shift share of the bar is 0.36.
    assert mean_part / bar == pytest.approx(shift**2 / drift**2, abs=0.1 / bar)
    assert float(shifted.all("line", "baseline")[0].attrs["x1"]) == pytest.approx(
        bar * base / drift, abs=0.1
    )
    assert "4.00\u00d7" in shifted.content and "shifted" in shifted.content
    assert unreferenced.all("line", "baseline") == [] and "no baseline" in unreferenced.content
    assert math.isclose(float(unreferenced.all("rect", "mean-shift")[0].attrs["width"]), 0.0)
    assert idle.all("rect", "drift") == [] and "no traffic yet" in idle.content
    assert len(idle.all("svg", "bar")) == 1
    off = section(document.root, "off")
    assert off.all("tr", "layer") == [] and "Drift monitoring is off" in off.content
    assert re.search(r"2 models loaded", document.root.content)
