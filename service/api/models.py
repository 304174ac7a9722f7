"""Model metadata, readiness and stored BatchNorm statistics."""

import asyncio
from collections.abc import Sequence
from typing import TypedDict

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service.api.context import context, loaded_model
from service.api.errors import error_response
from service.api.openapi import ERROR_RESPONSES
from service.api.responses import json_response
from service.backends.base import NormLayer
from service.config import TensorSpec
from service.errors import ModelNotReady
from service.registry import LoadedModel
from service.repository import parse_version
from service.stats.moments import Vector

router = APIRouter(responses=ERROR_RESPONSES)


class _TensorMetadata(TypedDict):
    name: str
    datatype: str
    shape: list[int]
    """-1 for the batch dimension."""


class _ModelMetadata(TypedDict):
    name: str
    versions: list[str]
    platform: str
    inputs: list[_TensorMetadata]
    outputs: list[_TensorMetadata]
    parameters: dict[str, str]


def _tensors(specs: Sequence[TensorSpec]) -> list[_TensorMetadata]:
    return [{"name": s.name, "datatype": s.datatype, "shape": [-1, *s.shape]} for s in specs]


async def _metadata(request: Request, model: LoadedModel) -> Response:
    repository = context(request).repository
    versions = await asyncio.to_thread(repository.versions, model.name, model.config)
    metadata: _ModelMetadata = {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": model.backend.platform,
        "inputs": _tensors(model.config.inputs),
        "outputs": _tensors(model.config.outputs),
        "parameters": {"active_version": str(model.version)},
    }
    return json_response(metadata)


@router.get("/v2/models/{model_name}")
async def model_metadata(request: Request, model_name: str) -> Response:
    return await _metadata(request, await loaded_model(request, model_name, None))


@router.get("/v2/models/{model_name}/versions/{version}")
async def version_metadata(request: Request, model_name: str, version: str) -> Response:
    return await _metadata(request, await loaded_model(request, model_name, version))


def _ready(request: Request, model_name: str, version: str | None) -> Response:
    registry = context(request).registry
    try:
        registry.get(model_name, None if version is None else parse_version(version))
    except ModelNotReady as exc:
        return error_response(400, str(exc))
    return json_response({"name": model_name, "ready": True})


@router.get("/v2/models/{model_name}/ready")
async def model_ready(request: Request, model_name: str) -> Response:
    return _ready(request, model_name, None)


@router.get("/v2/models/{model_name}/versions/{version}/ready")
async def version_ready(request: Request, model_name: str, version: str) -> Response:
    return _ready(request, model_name, version)


class _StoredLayer(TypedDict):
    name: str
    kind: str
    channels: int
    eps: float
    batch_independent: bool
    running_mean: Vector | None
    running_var: Vector | None


def _layer(layer: NormLayer) -> _StoredLayer:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "channels": layer.channels,
        "eps": layer.eps,
        "batch_independent": layer.batch_independent,
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
    }


def _stats(model: LoadedModel) -> Response:
    return json_response(
        {
            "name": model.name,
            "version": str(model.version),
            "layers": [_layer(layer) for layer in model.backend.layers],
        }
    )


@router.get("/v2/models/{model_name}/stats")
async def stats(request: Request, model_name: str) -> Response:
    return _stats(await loaded_model(request, model_name, None))


@router.get("/v2/models/{model_name}/versions/{version}/stats")
async def version_stats(request: Request, model_name: str, version: str) -> Response:
    return _stats(await loaded_model(request, model_name, version))
