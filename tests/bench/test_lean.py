"""The lean baseline server answers what bnserve answers, against onnxruntime in the test."""

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.backends.onnx.serving import session_options
from service.bench import lean
from service.bench.models import BUNDLED_MODELS, DIGITS, digits_model_file, write_digits_repository
from service.bench.server import BenchServer, LeanServer, ServerProcess

SPINNING = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BenchServer, LeanServer]]:
    root = tmp_path_factory.mktemp("lean")
    models = write_digits_repository(root / "models")
    with (
        BenchServer(models, root / "bnserve.log") as bnserve,
        LeanServer(digits_model_file(), root / "lean.log") as baseline,
    ):
        yield bnserve, baseline


def _reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(digits_model_file()), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(y)


def _infer(server: ServerProcess, x: np.ndarray) -> dict[str, object]:
    document = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(
        f"{server.url}/v2/models/{DIGITS}/infer",
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _logits(answer: dict[str, object]) -> np.ndarray:
    (output,) = answer["outputs"]  # type: ignore[misc]
    assert output["name"] == "logits" and output["datatype"] == "FP32"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


@pytest.mark.parametrize("count", [1, 5])
def test_lean_and_bnserve_answer_the_same_body_alike(
    servers: tuple[BenchServer, LeanServer], count: int
) -> None:
    x = np.load(BUNDLED_MODELS / DIGITS / "1" / "reference.npy")[:count].astype(np.float32)
    expected = _reference(x)
    for server in servers:
        answer = _infer(server, x)
        assert answer["model_name"] == DIGITS
        np.testing.assert_allclose(_logits(answer), expected, rtol=1e-5, atol=1e-5)


def test_lean_batcher_gives_each_request_its_own_rows(
    servers: tuple[BenchServer, LeanServer],
) -> None:
    _, baseline = servers
    x = np.load(BUNDLED_MODELS / DIGITS / "1" / "reference.npy")[:24].astype(np.float32)
    expected = _reference(x)
    # Concurrent 1-sample requests, batched together by the server, each sliced back.
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: _logits(_infer(baseline, x[i : i + 1])), range(24)))
    for index, logits in enumerate(answers):
        np.testing.assert_allclose(logits, expected[index : index + 1], rtol=1e-5, atol=1e-5)


def test_lean_health_and_unknown_route(servers: tuple[BenchServer, LeanServer]) -> None:
    _, baseline = servers
    assert baseline.get_status("/v2/health/live") == 200
    assert baseline.get_status("/v2/health/ready") == 404  # no features: not even readiness


def test_lean_session_options_are_bnserves_for_a_small_model() -> None:
    served, mine = session_options(0, spinning=False), lean.session_options()
    assert mine.graph_optimization_level == served.graph_optimization_level
    assert mine.execution_mode == served.execution_mode
    assert mine.inter_op_num_threads == served.inter_op_num_threads
    assert mine.intra_op_num_threads == served.intra_op_num_threads
    assert mine.get_session_config_entry(SPINNING) == served.get_session_config_entry(SPINNING)


def test_lean_imports_nothing_of_bnserve() -> None:
    source = Path(lean.__file__).read_text(encoding="utf-8")
    assert "from service" not in source and "import service" not in source
