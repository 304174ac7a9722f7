"""A real ``tritonclient.http`` client against ``bnserve serve`` on 127.0.0.1."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import LiveServer
from tests.helpers import reference_forward, sample_inputs


def _client(server: LiveServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_both_backends(live_server: LiveServer, binary: bool) -> None:
    client = _client(live_server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.get_model_metadata("digits_torch")["platform"] == "pytorch_export"
    x = sample_inputs("digits", 16, seed=3)
    expected = reference_forward("digits", x)
    for model in ("digits", "digits_torch"):
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer(model, [tensor], outputs=outputs, request_id="r1")
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
        assert result.get_response()["id"] == "r1"


def test_tritonclient_default_outputs_and_errors(live_server: LiveServer) -> None:
    client = _client(live_server)
    x = sample_inputs("wine", 4)
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("wine_torch", [tensor])  # outputs=None: all, binary by default
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference_forward("wine", x), rtol=1e-5, atol=1e-5
    )
    bad = x.copy()
    bad[2, 5] = np.nan
    tensor.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException, match=r"NaN|finite"):
        client.infer("wine", [tensor])
    with pytest.raises(InferenceServerException, match="nope"):
        client.infer("nope", [tensor])
    index = client.get_model_repository_index()
    assert {entry["name"] for entry in index} >= {"digits", "wine", "digits_ln_torch"}
