"""``/openapi.json`` describes the bodies the routes parse themselves, and describes them right:
real requests that the service answers 200 validate against the documented request schemas,
its answers against the documented response schemas, and what the schemas refuse the
service refuses too."""

from typing import Any

import jsonschema_rs
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import BUNDLED_MODELS
from tests.helpers import EXAMPLE_MODELS, infer_body, sample_inputs

INFER = ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer")


@pytest.fixture(scope="module")
def openapi(bundled_client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = bundled_client.get("/openapi.json").json()
    return document


def _schema(openapi: dict[str, Any], path: str, part: str, media: str) -> Any:
    operation = openapi["paths"][path]["post"]
    where = operation["requestBody"] if part == "request" else operation["responses"][part]
    return where["content"][media]["schema"]


def _valid(schema: Any, value: Any) -> bool:
    return bool(jsonschema_rs.validator_for(schema).is_valid(value))


@pytest.mark.parametrize("model", EXAMPLE_MODELS)
def test_infer_schemas_describe_real_traffic(
    bundled_client: TestClient, openapi: dict[str, Any], model: str
) -> None:
    x = sample_inputs(model, 3)
    flat = orjson.loads(infer_body(x, id="r1", parameters={"binary_data_output": False}))
    nested = orjson.loads(infer_body(x))
    nested["inputs"][0]["data"] = x.tolist()
    for path in INFER:
        request = _schema(openapi, path, "request", "application/json")
        response = _schema(openapi, path, "200", "application/json")
        assert (
            "application/octet-stream" in openapi["paths"][path]["post"]["requestBody"]["content"]
        )
        url = path.format(model_name=model, version="1")
        for body in (flat, nested):
            assert _valid(request, body)
            answer = bundled_client.post(url, content=orjson.dumps(body))
            assert answer.status_code == 200, answer.text
            assert _valid(response, answer.json())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b["inputs"][0].update(datatype="FP128"),
        lambda b: b["inputs"][0].update(datatype="BYTES"),
        lambda b: b["inputs"][0].update(shape=[-1, 13]),
        lambda b: b["inputs"][0].update(data=["1.0"] * 13),
        lambda b: b["inputs"][0].pop("name"),
        lambda b: b.pop("inputs"),
        lambda b: b.update(outputs=[{"parameters": {}}]),
        lambda b: b.update(id=7),
    ],
)
def test_what_the_infer_schema_refuses_the_service_refuses(
    bundled_client: TestClient, openapi: dict[str, Any], mutate: Any
) -> None:
    body = orjson.loads(infer_body(sample_inputs("wine", 1)))
    mutate(body)
    assert not _valid(_schema(openapi, INFER[0], "request", "application/json"), body)
    answer = bundled_client.post("/v2/models/wine/infer", content=orjson.dumps(body))
    assert answer.status_code == 400
    assert _valid(_schema(openapi, INFER[0], "4XX", "application/json"), answer.json())


def test_v1_and_index_schemas_describe_real_traffic(
    bundled_client: TestClient, openapi: dict[str, Any]
) -> None:
    predict = "/v1/models/{model_name}:predict"
    body = {"instances": sample_inputs("digits", 2).tolist()}
    assert _valid(_schema(openapi, predict, "request", "application/json"), body)
    answer = bundled_client.post("/v1/models/digits:predict", json=body)
    assert answer.status_code == 200
    assert _valid(_schema(openapi, predict, "200", "application/json"), answer.json())
    assert not _valid(_schema(openapi, predict, "request", "application/json"), {"instances": []})

    index = "/v2/repository/index"
    assert not openapi["paths"][index]["post"]["requestBody"]["required"]
    assert _valid(_schema(openapi, index, "request", "application/json"), {"ready": True})
    answer = bundled_client.post(index, json={"ready": True})
    bundled = sorted(p.name for p in BUNDLED_MODELS.iterdir() if (p / "config.toml").is_file())
    assert answer.status_code == 200
    assert sorted(entry["name"] for entry in answer.json()) == bundled
    assert _valid(_schema(openapi, index, "200", "application/json"), answer.json())
    assert not _valid(_schema(openapi, index, "request", "application/json"), {"ready": "yes"})
    assert bundled_client.post(index, json={"ready": "yes"}).status_code == 400


def test_recalibration_declares_its_streams(openapi: dict[str, Any]) -> None:
    for path in (
        "/v2/models/{model_name}/recalibrate",
        "/v2/models/{model_name}/versions/{version}/recalibrate",
    ):
        body = openapi["paths"][path]["post"]["requestBody"]
        assert body["required"]
        assert set(body["content"]) == {
            "application/x-npy",
            "application/octet-stream",
            "application/x-ndjson",
        }


def test_every_operation_documents_the_error_format_and_no_422(
    bundled_client: TestClient, openapi: dict[str, Any]
) -> None:
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)  # validation errors are 400 here
            error = responses["4XX"]["content"]["application/json"]["schema"]
            assert error["required"] == ["error"], (method, path)
    not_found = bundled_client.get("/v2/models/nope")
    assert not_found.status_code == 404 and _valid(error, not_found.json())
