"""POST /v2/models/{m}/recalibrate end to end: every mode against an independent torch / numpy
reference, both backends, versions, activation, rollback, restart and the admin token."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.examples.data import corrupt, load_digits_split, load_wine_split
from tests.conftest import BUNDLED_MODELS, make_client
from tests.helpers import assert_rel_close
from tests.recalibration.recalibration_support import (
    ADMIN,
    F32,
    NPY,
    Stats,
    assert_stats_close,
    ema_reference,
    file_statistics,
    http_statistics,
    module_logits,
    module_statistics,
    npy_body,
    population_reference,
    recalibrate,
    reference,
    served_logits,
    tree_snapshot,
    update_bn_reference,
    with_statistics,
)

# "to 1e-5": float32 forwards on both sides, float32 running averages in update_bn.
RTOL, ATOL = 1e-5, 1e-6
BATCH = {"digits": 64, "wine": 16, "digits_ln": 64}


def shifted(model: str) -> F32:
    """The family's test split under a strong shift (719 digits images / 72 wine rows)."""
    if model.startswith("wine"):
        x = load_wine_split()[2]
        return (x * np.linspace(0.6, 1.6, x.shape[1], dtype=np.float32)).astype(np.float32)
    return corrupt(load_digits_split()[2], "contrast", 5)


def family(model: str) -> str:
    return model.removesuffix("_torch")


@pytest.fixture
def model_repo(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Overrides conftest's: copies only the models a test uses, so its ``client`` starts
    faster (the test's ``model`` parameter and its other form, else digits and wine)."""
    callspec = getattr(request.node, "callspec", None)
    model = callspec.params.get("model") if callspec is not None else None
    names = [family(model), f"{family(model)}_torch"] if model else ["digits", "wine"]
    root = tmp_path / "models"
    for name in names:
        shutil.copytree(BUNDLED_MODELS / name, root / name)
    return root


def new_version(client: TestClient, repo: Path, model: str, x: F32, **query: object) -> Stats:
    """Recalibrate ``model`` (not activated) and return version 2's statistics, after checking
    that ``GET .../versions/2/stats`` serves exactly what the file holds."""
    response = recalibrate(client, model, npy_body(x), NPY, activate=False, **query)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == "2"
    stored = file_statistics(repo / model / "2")
    served = client.get(f"/v2/models/{model}/versions/2/stats")
    assert served.status_code == 200, served.text
    over_http = http_statistics(served.json())
    assert_stats_close(over_http, stored, rtol=0, atol=0)
    return stored


@pytest.mark.parametrize(
    "model", ["digits", "digits_torch", "wine", "wine_torch", "digits_ln", "digits_ln_torch"]
)
def test_cumulative_equals_update_bn(client: TestClient, model_repo: Path, model: str) -> None:
    """update_bn over the same full batches, only BatchNorm in train mode (dropout off)."""
    x, batch = shifted(model), BATCH[family(model)]
    got = new_version(client, model_repo, model, x, batch_size=batch)
    expected = update_bn_reference(reference(model), x, batch)
    assert_stats_close(got, expected, RTOL, ATOL)
    # The shift is strong enough that the statistics really moved.
    source = module_statistics(reference(model))
    assert not np.allclose(got["bn1"][1], source["bn1"][1], rtol=0.05)


@pytest.mark.parametrize("model", ["digits", "digits_torch"])
def test_population_equals_float64_over_recorded_inputs(
    client: TestClient, model_repo: Path, model: str
) -> None:
    x = shifted(model)
    got = new_version(client, model_repo, model, x, mode="population")
    assert_stats_close(got, population_reference(reference(model), x, 64), RTOL, ATOL)


@pytest.mark.parametrize("model", ["digits", "digits_torch"])
def test_ema_is_torchs_momentum_update_from_the_stored_statistics(
    client: TestClient, model_repo: Path, model: str
) -> None:
    x = shifted(model)[:320]
    got = new_version(client, model_repo, model, x, mode="ema", momentum=0.3)
    assert_stats_close(got, ema_reference(reference(model), x, 64, 0.3), RTOL, ATOL)


@pytest.mark.parametrize(("model", "mode"), [("digits", "cumulative"), ("wine", "population")])
def test_prior_mixes_source_and_target_by_sample_count(
    client: TestClient, model_repo: Path, model: str, mode: str
) -> None:
    """stat = N/(N+n) source + n/(N+n) target, n = samples (a whole number of batches here)."""
    batch = BATCH[model]
    x = shifted(model)
    x = x[: len(x) - len(x) % batch]
    prior, n = 300.0, len(x)
    got = new_version(client, model_repo, model, x, mode=mode, prior=prior, batch_size=batch)
    module = reference(model)
    estimate = update_bn_reference if mode == "cumulative" else population_reference
    target, source = estimate(module, x, batch), module_statistics(module)
    w = prior / (prior + n)
    expected = {
        name: tuple(
            w * s.astype(np.float64) + (1 - w) * t for s, t in zip(source[name], stats, strict=True)
        )
        for name, stats in target.items()
    }
    assert_stats_close(got, expected, RTOL, ATOL)  # type: ignore[arg-type]


def test_layers_pattern_recalibrates_only_the_matching_layers(
    client: TestClient, model_repo: Path
) -> None:
    x = shifted("digits")
    got = new_version(client, model_repo, "digits", x, layers="bn1,fc_*")
    source = file_statistics(model_repo / "digits" / "1")
    np.testing.assert_array_equal(got["bn2"][0], source["bn2"][0])
    np.testing.assert_array_equal(got["bn2"][1], source["bn2"][1])
    # bn2 keeps normalizing with its stored statistics while the others use batch statistics.
    expected = update_bn_reference(reference("digits"), x, 64, ["bn1", "fc_bn"])
    assert_stats_close({k: got[k] for k in expected}, expected, RTOL, ATOL)


@pytest.mark.parametrize("model", ["digits", "wine", "digits_ln"])
def test_onnx_and_torch_forms_get_the_same_statistics(
    client: TestClient, model_repo: Path, model: str
) -> None:
    x, batch = shifted(model), BATCH[model]
    from_onnx = new_version(client, model_repo, model, x, batch_size=batch)
    from_torch = new_version(client, model_repo, f"{model}_torch", x, batch_size=batch)
    assert_stats_close(from_onnx, from_torch, RTOL, ATOL)


def http_accuracy(client: TestClient, model: str, x: F32, y: np.ndarray) -> float:
    return float(np.mean(served_logits(client, model, x).argmax(axis=1) == y))


@pytest.mark.parametrize("model", ["digits", "digits_torch"])
def test_recalibration_recovers_accuracy_after_a_data_shift(client: TestClient, model: str) -> None:
    """The data-shift story through HTTP: contrast severity 5 on the digits test split."""
    _, _, x_test, y_test = load_digits_split()
    x_shift = corrupt(x_test, "contrast", 5)
    clean = http_accuracy(client, model, x_test, y_test)
    before = http_accuracy(client, model, x_shift, y_test)
    response = recalibrate(client, model, npy_body(x_shift))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["activated"] is True and report["version"] == "2"
    after = http_accuracy(client, model, x_shift, y_test)
    print(
        f"\n{model}, contrast severity 5: clean {clean:.1%}, shifted {before:.1%}, "
        f"after recalibration {after:.1%} ({(after - before) * 100:+.1f} points)"
    )
    assert after - before >= 0.30
    # The report says where the shift was and that the new statistics fit the stream.
    for layer in report["layers"]:
        assert layer["drift_after"]["drift"] < layer["drift_before"]["drift"]


def test_activation_rollback_and_restart(client: TestClient, model_repo: Path) -> None:
    model, x = "digits", shifted("digits")
    probe = x[:64]
    original = served_logits(client, model, probe)
    response = recalibrate(client, model, npy_body(x), activate=False)
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["activated"]) == ("2", False)
    assert np.array_equal(served_logits(client, model, probe), original)
    assert (model_repo / model / "active").read_text().strip() == "1"

    v2_module = with_statistics(reference(model), file_statistics(model_repo / model / "2"))
    expected_v2 = module_logits(v2_module, probe)
    assert_rel_close(served_logits(client, model, probe, version=2), expected_v2, 1e-5)

    activated = client.post(f"/v2/models/{model}/versions/2/activate", headers=ADMIN)
    assert activated.status_code == 200, activated.text
    assert activated.json() == {"name": model, "active": "2"}
    served_v2 = served_logits(client, model, probe)
    assert_rel_close(served_v2, expected_v2, 1e-5)
    assert not np.allclose(served_v2, original, atol=1e-3)
    assert client.get(f"/v2/models/{model}").json()["parameters"]["active_version"] == "2"

    with make_client(model_repo) as restarted:  # a new process on the same repository
        assert np.array_equal(served_logits(restarted, model, probe), served_v2)
        back = restarted.post(f"/v2/models/{model}/versions/1/activate", headers=ADMIN)
        assert back.status_code == 200, back.text
        assert np.array_equal(served_logits(restarted, model, probe), original)
    with make_client(model_repo) as restarted:
        assert np.array_equal(served_logits(restarted, model, probe), original)
        assert restarted.get(f"/v2/models/{model}/versions").json()["active"] == "1"


def test_versions_mark_the_active_one_and_carry_provenance(
    client: TestClient, model_repo: Path
) -> None:
    x = shifted("wine")
    response = recalibrate(client, "wine", npy_body(x), batch_size=16, mode="population")
    assert response.status_code == 200, response.text
    listing = client.get("/v2/models/wine/versions")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["active"] == "2"
    first, second = body["versions"]
    assert (first["version"], first["active"], first["provenance"]) == ("1", False, None)
    assert (second["version"], second["active"]) == ("2", True)
    provenance = second["provenance"]
    assert provenance["source_version"] == "1"
    assert provenance["parameters"]["mode"] == "population"
    assert provenance["parameters"]["batch_size"] == 16
    # 72 rows in batches of 16: 4 full batches, the 8-row tail dropped and said so.
    assert provenance["samples"] == 72 and provenance["batches"] == 4
    assert provenance["tail"]["samples"] == 8 and provenance["tail"]["used"] is False
    on_disk = (model_repo / "wine" / "2" / "recalibration.json").read_bytes()
    assert b'"source_version": "1"' in on_disk


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic dGVzdA==", "Bearer "])
def test_admin_routes_need_the_bearer_token(
    client: TestClient, model_repo: Path, header: str | None
) -> None:
    before = tree_snapshot(model_repo)
    headers = {"Content-Type": "application/x-npy"} | ({"Authorization": header} if header else {})
    body = npy_body(shifted("digits")[:128])
    denied = client.post("/v2/models/digits/recalibrate", content=body, headers=headers)
    assert denied.status_code == 401, denied.text
    assert "token" in denied.json()["error"].lower()
    assert denied.headers["www-authenticate"] == "Bearer"
    auth = {"Authorization": header} if header else {}
    assert client.post("/v2/models/digits/versions/1/activate", headers=auth).status_code == 401
    assert tree_snapshot(model_repo) == before
    # The same request with the token works: the 401 was about the token only.
    assert recalibrate(client, "digits", body).status_code == 200


def test_activating_a_missing_or_invalid_version_is_refused(
    client: TestClient, model_repo: Path
) -> None:
    before = tree_snapshot(model_repo)
    missing = client.post("/v2/models/digits/versions/7/activate", headers=ADMIN)
    assert missing.status_code == 404 and "7" in missing.json()["error"]
    invalid = client.post("/v2/models/digits/versions/..%2F1/activate", headers=ADMIN)
    assert invalid.status_code in (400, 404)
    assert tree_snapshot(model_repo) == before


def test_recalibrating_a_non_serving_version_starts_from_its_statistics(
    client: TestClient, model_repo: Path
) -> None:
    """``/versions/1/recalibrate`` while version 2 serves: ``ema`` starts from version 1."""
    x = shifted("digits")
    assert recalibrate(client, "digits", npy_body(x), mode="population").status_code == 200
    assert (model_repo / "digits" / "active").read_text().strip() == "2"
    response = client.post(
        "/v2/models/digits/versions/1/recalibrate?mode=ema&momentum=0.2&activate=false",
        content=npy_body(x[:256]),
        headers=ADMIN | {"Content-Type": NPY},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["source_version"], response.json()["version"]) == ("1", "3")
    expected = ema_reference(reference("digits"), x[:256], 64, 0.2)
    assert_stats_close(file_statistics(model_repo / "digits" / "3"), expected, RTOL, ATOL)
    assert (model_repo / "digits" / "active").read_text().strip() == "2"
