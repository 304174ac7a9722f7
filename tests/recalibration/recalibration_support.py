"""What the recalibration endpoint tests share: bodies, streamed uploads, repository snapshots,
statistics read straight from model files, and torch references for every mode.

The references use torch and numpy only (no bnserve code): ``update_bn`` with only the
BatchNorm modules in train mode (dropout stays in eval, as AIMET does), torch's own momentum
update for ``ema``, and float64 numpy over the recorded BatchNorm inputs for ``population``.
"""

import copy
import hashlib
import io
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import numpy.typing as npt
import onnx
import orjson
import torch
from fastapi.testclient import TestClient
from onnx import numpy_helper
from torch import nn
from torch.optim.swa_utils import update_bn

from service.backends.torch.program import load_program
from tests.conftest import ADMIN_TOKEN
from tests.helpers import infer_body, output_of, reference_module

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NPY = "application/x-npy"
RAW = "application/octet-stream"
NDJSON = "application/x-ndjson"
F32 = npt.NDArray[np.float32]
Stats = dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]


# --- bodies and requests ---------------------------------------------------------------------


def npy_body(x: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=False)
    return buffer.getvalue()


def raw_body(x: F32) -> bytes:
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def ndjson_body(x: F32) -> bytes:
    # .tolist() gives the float64 value of each float32, which JSON carries exactly.
    return b"".join(orjson.dumps(sample.tolist()) + b"\n" for sample in x)


BODIES = {NPY: npy_body, RAW: raw_body, NDJSON: ndjson_body}


def query_string(**query: object) -> str:
    parts = [
        f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in query.items()
        if value is not None
    ]
    return "?" + "&".join(parts) if parts else ""


def recalibrate(
    client: TestClient, model: str, body: bytes, media: str | None = NPY, **query: object
) -> Any:
    """``POST .../recalibrate`` with the admin token; the test client's response."""
    headers = dict(ADMIN) | ({"Content-Type": media} if media else {})
    return client.post(
        f"/v2/models/{model}/recalibrate{query_string(**query)}", content=body, headers=headers
    )


def post_chunks(
    client: TestClient,
    url: str,
    chunks: Iterable[bytes],
    headers: dict[str, str],
    delay: float = 0.0,
    on_chunk: Callable[[int], object] | None = None,
) -> httpx.Response:
    """POST ``chunks`` as separate ASGI body messages, on the test client's own event loop.

    ``TestClient`` joins a generator body into one message before the app sees it, so it
    cannot test chunking; ``httpx.ASGITransport`` hands every chunk over as it comes. Running
    it through the client's portal keeps the lifespan's models and executors usable.
    ``on_chunk(i)`` is called before chunk ``i`` is sent; ``delay`` seconds pass between chunks
    (awaited, so the loop keeps serving other requests).
    """

    async def body() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(chunks):
            if on_chunk is not None:
                on_chunk(index)
            if delay:
                await anyio.sleep(delay)
            yield chunk

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await http.post(url, content=body(), headers=headers, timeout=60.0)

    assert client.portal is not None, "use the client as a context manager"
    return client.portal.call(send)


def split_at(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``body`` cut at the given offsets (any order, duplicates give empty chunks)."""
    points = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


def served_logits(client: TestClient, model: str, x: F32, version: int | None = None) -> F32:
    """The served outputs for ``x``, in requests of at most 64 samples (max_batch_size)."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    parts = []
    for start in range(0, len(x), 64):
        response = client.post(path, content=infer_body(x[start : start + 64]))
        assert response.status_code == 200, response.text
        parts.append(output_of(response.json()))
    return np.concatenate(parts)


# --- the repository on disk ------------------------------------------------------------------


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> sha256 of its bytes (``"dir"`` for folders)."""
    return {
        str(path.relative_to(root)): "dir"
        if path.is_dir()
        else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


def file_statistics(version_dir: Path) -> Stats:
    """Running statistics read straight from the model file with onnx / torch."""
    if (version_dir / "model.onnx").exists():
        graph = onnx.load(str(version_dir / "model.onnx")).graph
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        return {
            node.input[3].removesuffix(".running_mean"): (
                inits[node.input[3]],
                inits[node.input[4]],
            )
            for node in graph.node
            if node.op_type == "BatchNormalization"
        }
    state = load_program(version_dir / "model.pt2").state_dict
    return {
        key.removesuffix(".running_mean"): (
            state[key].numpy(),
            state[key.removesuffix("mean") + "var"].numpy(),
        )
        for key in state
        if key.endswith(".running_mean")
    }


def http_statistics(payload: dict[str, Any]) -> Stats:
    """``GET .../stats`` as arrays, BatchNorm layers only."""
    return {
        layer["name"]: (np.asarray(layer["running_mean"]), np.asarray(layer["running_var"]))
        for layer in payload["layers"]
        if not layer["batch_independent"]
    }


def assert_stats_close(actual: Stats, expected: Stats, rtol: float, atol: float) -> None:
    assert sorted(actual) == sorted(expected)
    for name, (mean, var) in expected.items():
        for label, got, want in (("mean", actual[name][0], mean), ("var", actual[name][1], var)):
            np.testing.assert_allclose(
                np.asarray(got, np.float64),
                np.asarray(want, np.float64),
                rtol=rtol,
                atol=atol,
                err_msg=f"layer {name} running_{label}",
            )


def assert_stats_identical(actual: Stats, expected: Stats) -> None:
    assert sorted(actual) == sorted(expected)
    for name, (mean, var) in expected.items():
        assert np.array_equal(actual[name][0], mean), f"layer {name} running_mean differs"
        assert np.array_equal(actual[name][1], var), f"layer {name} running_var differs"


# --- torch references ------------------------------------------------------------------------


def batchnorms(module: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        name: sub
        for name, sub in module.named_modules()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm)
    }


def full_batches(x: F32, batch_size: int) -> list[torch.Tensor]:
    """``x`` in batches of ``batch_size``; a partial tail is dropped unless it is the only one."""
    stop = len(x) - len(x) % batch_size if len(x) >= batch_size else len(x)
    return [torch.from_numpy(x[i : i + batch_size]) for i in range(0, stop, batch_size)]


class _OnlyNormsTrain(nn.Module):
    """``train()`` switches only the chosen BatchNorm modules; dropout and the rest stay eval.

    Only the chosen modules are registered children: ``update_bn`` resets and re-estimates
    every BatchNorm it finds in ``modules()``, and the others must keep their statistics.
    """

    def __init__(self, inner: nn.Module, layers: Iterable[str]) -> None:
        super().__init__()
        self.inner = [inner.eval()]  # a plain list hides the module from modules()
        self.norms = nn.ModuleList(batchnorms(inner)[name] for name in layers)
        self.training = False  # update_bn restores this mode at its end

    def train(self, mode: bool = True) -> "_OnlyNormsTrain":
        self.training = mode
        for norm in self.norms:
            norm.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner[0](x)
        return out


def reference(model: str) -> nn.Module:
    """The torch module an example model was exported from (either form), eval mode."""
    return reference_module(model)


def module_statistics(module: nn.Module, layers: Iterable[str] | None = None) -> Stats:
    norms = batchnorms(module)
    return {
        name: (
            norms[name].running_mean.detach().numpy().copy(),  # type: ignore[union-attr]
            norms[name].running_var.detach().numpy().copy(),  # type: ignore[union-attr]
        )
        for name in (norms if layers is None else layers)
    }


def update_bn_reference(
    module: nn.Module, x: F32, batch_size: int, layers: Iterable[str] | None = None
) -> Stats:
    """``cumulative``: ``update_bn`` over the full batches, only ``layers`` in train mode."""
    adapted = copy.deepcopy(module).eval()
    names = list(batchnorms(adapted) if layers is None else layers)
    update_bn(full_batches(x, batch_size), _OnlyNormsTrain(adapted, names))
    return module_statistics(adapted, names)


def ema_reference(module: nn.Module, x: F32, batch_size: int, momentum: float) -> Stats:
    """``ema``: torch's own train-mode update from the stored statistics."""
    adapted = copy.deepcopy(module).eval()
    for bn in batchnorms(adapted).values():
        bn.momentum = momentum
        bn.train()
    with torch.no_grad():
        for batch in full_batches(x, batch_size):
            adapted(batch)
    return module_statistics(adapted)


@contextmanager
def _recorded_inputs(module: nn.Module) -> Iterator[dict[str, list[npt.NDArray[np.float64]]]]:
    seen: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in batchnorms(module)}
    handles = [
        bn.register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].append(args[0].detach().double().numpy())
        )
        for name, bn in batchnorms(module).items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def population_reference(module: nn.Module, x: F32, batch_size: int) -> Stats:
    """``population``: float64 mean and unbiased variance over every value entering each
    BatchNorm in the batch-statistics forward (only BN in train mode), all batches pooled."""
    adapted = copy.deepcopy(module).eval()
    for bn in batchnorms(adapted).values():
        bn.train()
    with _recorded_inputs(adapted) as seen, torch.no_grad():
        for batch in full_batches(x, batch_size):
            adapted(batch)
    result: Stats = {}
    for name, parts in seen.items():
        values = np.concatenate(parts)
        per_channel = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
        result[name] = (per_channel.mean(axis=1), per_channel.var(axis=1, ddof=1))
    return result


def with_statistics(module: nn.Module, stats: Stats) -> nn.Module:
    """A copy of ``module`` (eval) holding ``stats`` as its running statistics."""
    adapted = copy.deepcopy(module).eval()
    norms = batchnorms(adapted)
    with torch.no_grad():
        for name, (mean, var) in stats.items():
            norms[name].running_mean.copy_(torch.tensor(np.asarray(mean, np.float32)))  # type: ignore[union-attr]
            norms[name].running_var.copy_(torch.tensor(np.asarray(var, np.float32)))  # type: ignore[union-attr]
    return adapted


def module_logits(module: nn.Module, x: F32) -> F32:
    with torch.no_grad():
        out: F32 = module(torch.from_numpy(x)).numpy()
    return out
