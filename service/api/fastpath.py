"""The inference routes again, as plain Starlette routes placed first in the router.

FastAPI resolves every route's dependencies and wraps its endpoint, about 80 us per request;
the data plane needs none of that (it parses its own bodies), so these routes call the same
handlers directly. The FastAPI routes in ``v2.py`` stay, for the OpenAPI description, and are
never reached for these paths.
"""

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api import v2


async def _infer(request: Request) -> Response:
    return await v2.infer(request, request.path_params["model_name"])


async def _infer_version(request: Request) -> Response:
    params = request.path_params
    return await v2.infer_version(request, params["model_name"], params["version"])


async def _predict_v1(request: Request) -> Response:
    return await v2.predict_v1(request, request.path_params["model_name"])


ROUTES = [
    Route("/v2/models/{model_name}/infer", _infer, methods=["POST"]),
    Route("/v2/models/{model_name}/versions/{version}/infer", _infer_version, methods=["POST"]),
    Route("/v1/models/{model_name}:predict", _predict_v1, methods=["POST"]),
]
