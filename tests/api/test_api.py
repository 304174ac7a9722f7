"""Open Inference Protocol over HTTP, end to end on the bundled example models."""

from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_TOKEN, make_client
from tests.helpers import (
    EXAMPLE_MODELS,
    MODELS,
    assert_rel_close,
    infer_body,
    output_of,
    reference_forward,
    sample_inputs,
)
from tests.recalibration.recalibration_support import file_statistics

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_served_outputs_equal_the_exported_module(bundled_client: TestClient, model: str) -> None:
    x = sample_inputs(model, 64)
    response = bundled_client.post(f"/v2/models/{model}/infer", content=infer_body(x))
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        output_of(response.json()), reference_forward(model, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_a_sample_alone_equals_its_row_in_a_batch(bundled_client: TestClient, model: str) -> None:
    """The eval-mode invariant: batch composition never changes a sample's output."""
    x = sample_inputs(model, 64, seed=1)
    batch = output_of(
        bundled_client.post(f"/v2/models/{model}/infer", content=infer_body(x)).json()
    )
    for i in range(len(x)):
        alone = bundled_client.post(f"/v2/models/{model}/infer", content=infer_body(x[i : i + 1]))
        assert_rel_close(output_of(alone.json())[0], batch[i], 1e-6)


@pytest.mark.parametrize("architecture", ["digits", "wine", "digits_ln"])
def test_onnx_and_torch_forms_agree(bundled_client: TestClient, architecture: str) -> None:
    x = sample_inputs(architecture, 32, seed=2)
    onnx_out = bundled_client.post(f"/v2/models/{architecture}/infer", content=infer_body(x))
    torch_out = bundled_client.post(f"/v2/models/{architecture}_torch/infer", content=infer_body(x))
    np.testing.assert_allclose(
        output_of(onnx_out.json()), output_of(torch_out.json()), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_stats_are_the_running_statistics_stored_in_the_file(
    bundled_client: TestClient, model: str
) -> None:
    body = bundled_client.get(f"/v2/models/{model}/stats").json()
    expected = file_statistics(MODELS / model / "1")
    served = {layer["name"]: layer for layer in body["layers"] if not layer["batch_independent"]}
    assert served.keys() == expected.keys()
    for name, (mean, var) in expected.items():
        assert served[name]["kind"] == "BatchNorm"
        assert served[name]["channels"] == mean.size
        assert np.array_equal(np.asarray(served[name]["running_mean"]), mean.astype(np.float64))
        assert np.array_equal(np.asarray(served[name]["running_var"]), var.astype(np.float64))
    versioned = bundled_client.get(f"/v2/models/{model}/versions/1/stats").json()
    assert versioned == body


def test_layer_norm_is_listed_as_batch_independent(bundled_client: TestClient) -> None:
    for model in ("digits_ln", "digits_ln_torch"):
        layers = bundled_client.get(f"/v2/models/{model}/stats").json()["layers"]
        norm = [layer for layer in layers if layer["batch_independent"]]
        assert [(layer["name"], layer["kind"]) for layer in norm] == [("fc_ln", "LayerNorm")]
        assert norm[0]["running_mean"] is None


def test_server_and_model_metadata(bundled_client: TestClient) -> None:
    server = bundled_client.get("/v2").json()
    assert server["name"] == "bnserve"
    assert set(server["extensions"]) >= {"binary_tensor_data", "model_repository"}
    assert bundled_client.get("/v2/health/live").status_code == 200
    assert bundled_client.get("/v2/health/ready").status_code == 200
    meta = bundled_client.get("/v2/models/digits").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert bundled_client.get("/v2/models/digits_torch").json()["platform"] == "pytorch_export"
    assert bundled_client.get("/v2/models/digits/versions/1").json()["name"] == "digits"
    assert bundled_client.get("/v2/models/wine/ready").json() == {"name": "wine", "ready": True}
    assert bundled_client.get("/v2/models/wine/versions/1/ready").status_code == 200


def test_infer_echoes_id_and_filters_outputs(bundled_client: TestClient) -> None:
    x = sample_inputs("digits", 3)
    body = infer_body(x, id="req-7", outputs=[{"name": "logits"}])
    response = bundled_client.post("/v2/models/digits/versions/1/infer", content=body).json()
    assert response["id"] == "req-7"
    assert response["model_name"] == "digits"
    assert response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["logits"]
    assert response["outputs"][0]["shape"] == [3, 10]


def test_v1_predict_equals_v2(bundled_client: TestClient) -> None:
    x = sample_inputs("wine", 5)
    v1 = bundled_client.post("/v1/models/wine:predict", json={"instances": x.tolist()})
    assert v1.status_code == 200, v1.text
    v2 = output_of(bundled_client.post("/v2/models/wine/infer", content=infer_body(x)).json())
    np.testing.assert_allclose(np.asarray(v1.json()["predictions"]), v2, rtol=1e-6)


def _error(client: TestClient, path: str, body: bytes, status: int, *fragments: str) -> None:
    response = client.post(path, content=body)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_infer_errors_say_what_is_wrong(bundled_client: TestClient) -> None:
    c, infer = bundled_client, "/v2/models/digits/infer"
    x = sample_inputs("digits", 2)
    _error(c, "/v2/models/nope/infer", infer_body(x), 404, "nope")
    _error(c, "/v2/models/digits/versions/9/infer", infer_body(x), 404, "version 9")
    _error(c, "/v2/models/digits/versions/x/infer", infer_body(x), 400, "invalid version")
    _error(c, "/v2/models/..%2Fetc/infer", infer_body(x), 404)
    _error(c, infer, b"{not json", 400, "JSON")
    _error(c, infer, infer_body(x, name="image"), 400, "image")
    _error(c, infer, b'{"inputs": []}', 400, "input")
    _error(c, infer, infer_body(x, datatype="FP64"), 400, "FP64", "FP32")
    _error(c, infer, infer_body(x.reshape(2, 8, 8, 1)), 400, "shape")
    bad_count = infer_body(x).replace(b'"shape":[2,1,8,8]', b'"shape":[3,1,8,8]')
    _error(c, infer, bad_count, 400, "element")
    nan = x.copy()
    nan[1, 0, 2, 3] = np.nan  # JSON has no NaN: the encoder sends null, element 35
    _error(c, infer, infer_body(nan), 400, "input 'input'")
    header = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                     "parameters": {"binary_data_size": nan.nbytes}}]}
    )  # fmt: skip
    binary = c.post(
        infer,
        content=header + nan.astype(np.float32).tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert binary.status_code == 400, binary.text
    assert "input 'input'" in binary.json()["error"]
    too_big = sample_inputs("digits", 65)
    _error(c, infer, infer_body(too_big), 413, "65", "64")


def test_non_finite_values_are_refused(bundled_client: TestClient) -> None:
    x = sample_inputs("digits", 2)
    body = infer_body(x)
    first = body.index(b'"data":[') + len(b'"data":[')
    body = body[:first] + b"1e39" + body[body.index(b",", first) :]  # overflows FP32 to inf
    response = bundled_client.post("/v2/models/digits/infer", content=body)
    assert response.status_code == 400
    assert "input 'input'" in response.json()["error"]


def test_oversized_body_is_refused(model_repo: Path) -> None:
    with make_client(model_repo, max_body_bytes=1000) as small:
        x = sample_inputs("digits", 4)
        _error(small, "/v2/models/digits/infer", infer_body(x), 413, "limit")


def test_unknown_routes_use_the_error_format(bundled_client: TestClient) -> None:
    response = bundled_client.get("/v2/nothing/here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_repository_unload_and_load(client: TestClient) -> None:
    x = sample_inputs("digits", 2)
    assert client.post("/v2/repository/models/digits/unload").status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    response = client.post("/v2/repository/models/digits/unload", headers=wrong)
    assert response.status_code == 401
    assert "invalid" in response.json()["error"]
    assert client.post("/v2/repository/models/digits/unload", headers=ADMIN).status_code == 200
    index = {e["name"]: e for e in client.post("/v2/repository/index").json()}
    assert index["digits"]["state"] == "UNAVAILABLE"
    assert index["wine"]["state"] == "READY"
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert "digits" not in {e["name"] for e in ready}
    response = client.post("/v2/models/digits/infer", content=infer_body(x))
    assert response.status_code == 503
    assert "not loaded" in response.json()["error"]
    assert client.get("/v2/models/digits/ready").status_code == 400
    assert client.post("/v2/repository/models/digits/load", headers=ADMIN).status_code == 200
    assert client.post("/v2/models/digits/infer", content=infer_body(x)).status_code == 200
    assert client.post("/v2/repository/models/nope/load", headers=ADMIN).status_code == 404


def test_invalid_config_is_refused_at_start(model_repo: Path) -> None:
    config = model_repo / "wine" / "config.toml"
    config.write_text(config.read_text() + "\n[drift]\nhalf_lfe = 3\n".replace("[drift]\n", ""))
    text = config.read_text().replace("max_batch_size = 64", "max_batch_size = 0\ncolour = 1")
    config.write_text(text)
    with pytest.raises(Exception, match="max_batch_size") as info, make_client(model_repo):
        pass
    assert str(config) in str(info.value)
    assert "colour" in str(info.value)
