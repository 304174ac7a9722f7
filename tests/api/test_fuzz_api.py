"""API fuzzing with schemathesis, driven by the service's own ``/openapi.json``.

A real ``bnserve serve`` runs on a private copy of the bundled repository. Every operation,
admin ones included (the token is sent), gets schemathesis' coverage cases (boundaries,
wrong types, missing parts, unexpected methods) and hypothesis-generated cases, valid and
invalid. Path parameters are drawn from the real model names and versions most of the time,
and half the bodies of the model operations are replaced by model-aware ones (right input
name and shape, extreme values, odd batch sizes, binary framing, real recalibration streams),
so that requests get past the 404s and 400s and reach inference, recalibration and the
version writes.

Each response must be no server error, and each 4xx must be ``{"error": "<message>"}``.
Afterwards the repository must still serve: the versions that fuzzing wrote hold finite
statistics, a fresh app loads every model, and nothing was written outside the repository.

The default run is bounded for CI. A longer one (examples per operation, another seed)::

    BNSERVE_FUZZ_EXAMPLES=1000 BNSERVE_FUZZ_SEED=7 python -m pytest tests/api/test_fuzz_api.py
"""

import io
import math
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import numpy as np
import numpy.typing as npt
import orjson
import pytest
import schemathesis
from fastapi.testclient import TestClient
from requests.structures import CaseInsensitiveDict
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import APIOperation, BaseSchema

from service.config import ModelConfig, load_model_config
from tests.conftest import ADMIN_TOKEN, BUNDLED_MODELS, LiveServer, make_client, start_server
from tests.helpers import infer_body, sample_inputs

EXAMPLES = int(os.environ.get("BNSERVE_FUZZ_EXAMPLES", "80"))
"""Hypothesis examples per operation in the fuzzing phase (coverage cases come on top)."""
SEED = int(os.environ.get("BNSERVE_FUZZ_SEED", "20240611"))
MIN_CASES = 2000
CONFIGS = {
    p.name: load_model_config(p / "config.toml")
    for p in sorted(BUNDLED_MODELS.iterdir())
    if (p / "config.toml").is_file()
}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_SCALES = (0.0, 1e-30, 1.0, 1e3, 1e19, 1e30, 3e38)
"""Magnitudes of generated tensors: zero variance, denormal-ish, normal, float32 overflow."""


@dataclass
class FuzzLog:
    """What the fuzzing sent and got, for the checks that follow it."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)


@dataclass
class FuzzTarget:
    server: LiveServer
    root: Path
    """Holds the repository (``models``), the server log and a sentinel file, nothing else."""

    @property
    def models(self) -> Path:
        return self.root / "models"


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(BUNDLED_MODELS, root / "models")
    (root / "sentinel").write_text("outside the repository\n")
    server = start_server(root / "models", root / "server.log", BNSERVE_MODEL_THREADS="1")
    try:
        yield FuzzTarget(server, root)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_target: FuzzTarget) -> BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": AUTH,
            "dictionaries": {
                "models": {"values": sorted(CONFIGS)},
                "versions": {"values": ["1", "2", "3"]},
            },
            "parameters": {
                "path.model_name": {"dictionary": "models", "probability": 0.8},
                "path.version": {"dictionary": "versions", "probability": 0.7},
            },
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_target.server.url}/openapi.json", config=config)


def _values(rng: np.random.Generator, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    scale = _SCALES[rng.integers(len(_SCALES))]
    if rng.random() < 0.2:  # constant data: zero variance in every channel
        return np.full(shape, scale, np.float32)
    with np.errstate(over="ignore"):  # 3e38 * N(0, 1) overflows to inf now and then: wanted
        return (rng.standard_normal(shape) * scale).astype(np.float32)


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null, as a client's JSON encoder would send them."""
    return orjson.loads(orjson.dumps(value))


def _infer_body(case: Case, rng: np.random.Generator, config: ModelConfig) -> None:
    spec = config.inputs[0]
    batch = int(rng.choice([1, 2, rng.integers(1, config.max_batch_size + 2)]))
    x = _values(rng, (batch, *spec.shape))
    request: dict[str, Any] = {"inputs": [{"name": spec.name, "datatype": spec.datatype}]}
    request["inputs"][0]["shape"] = list(x.shape)
    if rng.random() < 0.5:
        binary = {"binary_data": bool(rng.random() < 0.5)}
        request["outputs"] = [{"name": config.outputs[0].name, "parameters": binary}]
    if rng.random() < 0.5:
        request["inputs"][0]["data"] = x.ravel().tolist()
        case.media_type, case.body = "application/json", _json_safe(request)
        return
    request["inputs"][0]["parameters"] = {"binary_data_size": x.nbytes}
    header = orjson.dumps(request)
    length = len(header) + int(rng.choice([0, 0, 0, -1, 1]))  # sometimes a wrong framing
    case.media_type, case.body = "application/octet-stream", header + x.tobytes()
    case.headers = CaseInsensitiveDict(
        {**(case.headers or {}), "Inference-Header-Content-Length": str(length)}
    )


def _predict_body(case: Case, rng: np.random.Generator, config: ModelConfig) -> None:
    spec = config.inputs[0]
    batch = int(rng.integers(1, config.max_batch_size + 2))
    case.media_type = "application/json"
    case.body = _json_safe({"instances": _values(rng, (batch, *spec.shape)).tolist()})


def _recalibration_body(case: Case, rng: np.random.Generator, config: ModelConfig) -> None:
    spec = config.inputs[0]
    x = _values(rng, (int(rng.integers(1, 160)), *spec.shape))
    mode = str(rng.choice(["cumulative", "population", "ema"]))
    query: dict[str, Any] = {"mode": mode, "batch_size": int(rng.choice([2, 3, 16, 64]))}
    if mode == "ema":
        query["momentum"] = str(rng.choice(["1", "0.1", "1e-300"]))
    elif rng.random() < 0.5:
        query["prior"] = str(rng.choice(["0", "10", "1e300", "inf"]))
    query |= {"dry_run": bool(rng.random() < 0.3), "activate": bool(rng.random() < 0.7)}
    case.query = query
    kind = rng.integers(3)
    if kind == 0:
        buffer = io.BytesIO()
        np.save(buffer, x.astype(rng.choice([np.float32, np.float64])))
        case.media_type, case.body = "application/x-npy", buffer.getvalue()
    elif kind == 1:
        cut = int(rng.choice([0, 0, 0, 3]))  # sometimes a truncated last sample
        case.media_type, case.body = "application/octet-stream", x.tobytes()[: x.nbytes - cut]
    else:
        lines = b"\n".join(orjson.dumps(sample.tolist()) for sample in x)
        case.media_type, case.body = "application/x-ndjson", lines + b"\n"


_MODEL_AWARE = {"infer": _infer_body, "predict": _predict_body, "recalibrate": _recalibration_body}


def _model_aware(case: Case) -> None:
    """Replace half the bodies of model operations by ones built for the model in the path.

    The choice and the data derive from the generated case itself, so a case replays (and
    shrinks) to the same request.
    """
    name = case.path_parameters.get("model_name") if case.path_parameters else None
    kind = next((k for k in _MODEL_AWARE if case.operation.path.endswith(k)), None)
    if name not in CONFIGS or kind is None or case.operation.method.upper() != "POST":
        return
    seed = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode())
    rng = np.random.default_rng(seed)
    if rng.random() < 0.5:
        _MODEL_AWARE[kind](case, rng, CONFIGS[name])


def error_body(ctx: CheckContext, response: Response, case: Case) -> None:
    """Every 4xx answer is JSON ``{"error": "<non-empty message>"}``."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.text!r}"
        ) from None
    assert isinstance(body, dict), f"{response.status_code} body is not an object: {body!r}"
    message = body.get("error")
    assert isinstance(message, str) and message, f"{response.status_code} without error: {body!r}"


# Recalibration streams go on the wire as they are, like application/octet-stream.
schemathesis.serializer.alias(
    ["application/x-npy", "application/x-ndjson"], "application/octet-stream"
)


def _modes(operation: APIOperation) -> list[GenerationMode]:
    """Valid cases for every operation; invalid ones where there is something to get wrong
    (a path parameter is any string, so it has no invalid value)."""
    inputs = (operation.query, operation.headers, operation.body)
    if any(len(container) for container in inputs):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def _fuzz_operation(
    operation: APIOperation, mode: GenerationMode, target: FuzzTarget, log: FuzzLog
) -> None:
    """Send ``EXAMPLES`` generated cases of ``mode`` to ``operation`` and check each answer.

    Schemathesis is driven through its documented Hypothesis strategies (``as_strategy``),
    not its pytest plugin, whose internals change with pytest's.
    """

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],  # a failure is reported as found, not shrunk
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Case) -> None:
        _model_aware(case)
        response = case.call_and_validate(
            checks=[not_a_server_error, error_body], headers=AUTH, timeout=60
        )
        log.cases[case.operation.label] += 1
        log.statuses[(case.operation.label, response.status_code)] += 1
        if case.operation.path.endswith("/unload") and response.status_code == 200:
            # Put the model back, so that later cases reach it rather than a 503 "not loaded".
            name = response.json()["name"]
            url = f"{target.server.url}/v2/repository/models/{name}/load"
            assert httpx.post(url, headers=AUTH, timeout=60).status_code == 200

    send()


def _unexpected_methods(url: str, paths: dict[str, Any], log: FuzzLog) -> None:
    """Every path answers a method it does not have with a JSON 405."""
    for path, operations in paths.items():
        concrete = path.replace("{model_name}", "digits").replace("{version}", "1")
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - {m.upper() for m in operations}:
            response = httpx.request(method, f"{url}{concrete}", headers=AUTH, timeout=60)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.json()["error"], (method, path, response.text)
            log.cases[f"{method} {path}"] += 1
            log.statuses[(f"{method} {path}", 405)] += 1


def _finite_stats(url: str, model: str, version: str) -> None:
    response = httpx.get(f"{url}/v2/models/{model}/versions/{version}/stats", timeout=60)
    assert response.status_code == 200, response.text
    for layer in response.json()["layers"]:
        if layer["running_mean"] is None:  # LayerNorm and the like: no running statistics
            continue
        mean, var = np.asarray(layer["running_mean"]), np.asarray(layer["running_var"])
        where = f"{model} v{version} {layer['name']}"
        assert np.isfinite(mean).all() and np.isfinite(var).all(), f"{where}: non-finite"
        assert (var >= 0).all(), f"{where}: negative variance"


def test_fuzz_api(fuzz_target: FuzzTarget, fuzz_schema: BaseSchema) -> None:
    fuzz_log = FuzzLog()
    url = fuzz_target.server.url
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    for operation in operations:
        for mode in _modes(operation):
            _fuzz_operation(operation, mode, fuzz_target, fuzz_log)
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    labels = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    assert {operation.label for operation in operations} == labels
    assert set(fuzz_log.cases) == labels  # every operation was reached
    _unexpected_methods(url, paths, fuzz_log)
    total = sum(fuzz_log.cases.values())
    print(f"fuzzing: {total} cases over {len(labels)} operations")  # for the record (-s)
    assert total >= MIN_CASES, f"only {total} cases ran"
    assert not [key for key in fuzz_log.statuses if key[1] >= 500]
    # The fuzzing reached the models: inference and recalibration succeeded at times.
    succeeded = {label.rsplit("/", 1)[-1] for (label, status) in fuzz_log.statuses if status == 200}
    assert {"infer", "{model_name}:predict", "recalibrate", "activate"} <= succeeded

    outside = sorted(p.name for p in fuzz_target.root.iterdir())
    assert outside == ["models", "sentinel", "server.log"]
    assert (fuzz_target.root / "sentinel").read_text() == "outside the repository\n"
    written = 0
    for model in CONFIGS:
        listing = httpx.get(f"{url}/v2/models/{model}/versions", timeout=60).json()
        written += len(listing["versions"]) - 1
        for entry in listing["versions"]:
            _finite_stats(url, model, entry["version"])
    assert written > 0, "no recalibration wrote a version: nothing was checked"

    with make_client(fuzz_target.models) as client:  # a fresh start on what fuzzing left
        for model, config in CONFIGS.items():
            spec = config.inputs[0]
            x = np.random.default_rng(0).standard_normal((3, *spec.shape)).tolist()
            body = {"inputs": [{"name": spec.name, "datatype": spec.datatype}]}
            body["inputs"][0] |= {"shape": [3, *spec.shape], "data": x}
            response = client.post(f"/v2/models/{model}/infer", json=body)
            assert response.status_code == 200, response.text
            (output,) = response.json()["outputs"]
            assert output["shape"] == [3, *config.outputs[0].shape]
            assert all(math.isfinite(v) for v in output["data"]), f"{model}: non-finite output"


def test_unloading_a_model_twice_succeeds(client: TestClient) -> None:
    """Found while fuzzing: a second unload answered 503 "not loaded", a server error that no
    retry can fix. As in Triton's model-repository extension, it now succeeds and changes
    nothing; unknown models are still 404 and an unloaded model still refuses inference."""
    for _ in range(2):
        response = client.post("/v2/repository/models/wine/unload", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["state"] == "UNAVAILABLE"
    assert client.post("/v2/repository/models/nope/unload", headers=AUTH).status_code == 404
    body = infer_body(sample_inputs("wine", 1))
    assert client.post("/v2/models/wine/infer", content=body).status_code == 503
    assert client.post("/v2/repository/models/wine/load", headers=AUTH).status_code == 200
    assert client.post("/v2/models/wine/infer", content=body).status_code == 200
