"""``/metrics``: the names and labels of README "Metrics", bounded label sets, values that match
traffic."""

import tomllib
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_client
from tests.helpers import infer_body, sample_inputs


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_request_metrics_count_traffic_by_model_and_code(client: TestClient) -> None:
    x = sample_inputs("digits", 3)
    for _ in range(4):
        assert client.post("/v2/models/digits/infer", content=infer_body(x)).status_code == 200
    assert client.post("/v2/models/digits/infer", content=b"{").status_code == 400
    client.post("/v1/models/wine:predict", json={"instances": sample_inputs("wine", 2).tolist()})
    samples = _samples(client)
    assert (
        samples[
            ("bnserve_requests_total", (("code", "200"), ("model", "digits"), ("protocol", "http")))
        ]
        == 4
    )
    assert (
        samples[
            ("bnserve_requests_total", (("code", "400"), ("model", "digits"), ("protocol", "http")))
        ]
        == 1
    )
    assert (
        samples[
            ("bnserve_requests_total", (("code", "200"), ("model", "wine"), ("protocol", "http")))
        ]
        == 1
    )
    count = ("bnserve_request_duration_seconds_count", (("model", "digits"),))
    assert samples[count] == 5
    batch_sum = samples[("bnserve_inference_batch_size_sum", (("model", "digits"),))]
    assert batch_sum == 12  # 4 requests x 3 samples; the bad one never reached the model
    assert samples[("bnserve_model_active_version", (("model", "digits"),))] == 1
    assert samples[("bnserve_queue_depth", (("model", "digits"),))] == 0


def test_unknown_paths_and_models_create_no_series(client: TestClient) -> None:
    before = set(_samples(client))
    x = sample_inputs("digits", 1)
    for name in ("nope", "n0pe2", "..", "digits%2F..%2F"):
        client.post(f"/v2/models/{name}/infer", content=infer_body(x))
    for path in ("/v2/whatever", "/admin", "/v2/models/digits/infer/extra"):
        client.get(path)
    after = set(_samples(client))
    assert after == before
    labels = {dict(key[1]).get("model") for key in after}
    assert labels <= {
        None,
        "digits",
        "digits_torch",
        "wine",
        "wine_torch",
        "digits_ln",
        "digits_ln_torch",
        "digits_adaptive",
    }


def test_adaptation_counters_start_at_zero_for_the_models_that_adapt(model_repo: Path) -> None:
    """A series that first appears at 1 would hide the first decision from ``increase()``."""
    with (model_repo / "digits" / "config.toml").open("a") as config:
        config.write('\n[adaptation]\ncapture = 1024\ntrigger = "propose"\nmin_samples = 512\n')
    with make_client(model_repo) as client:
        samples = _samples(client)
    adaptations = {
        dict(labels)["outcome"]: value
        for (name, labels), value in samples.items()
        if name == "bnserve_adaptations_total" and dict(labels)["model"] == "digits"
    }
    assert adaptations == dict.fromkeys(["proposed", "activated", "rejected", "rolled_back"], 0.0)
    models = {dict(k[1])["model"] for k in samples if k[0] == "bnserve_adaptations_total"}
    adapting = {
        path.parent.name
        for path in model_repo.glob("*/config.toml")
        if tomllib.loads(path.read_text()).get("adaptation", {}).get("trigger", "off") != "off"
    }
    assert models == adapting and "wine" not in adapting
