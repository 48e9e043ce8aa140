"""Triton's statistics and model configuration extensions over REST.

``GET /v2/models/stats`` (every model), ``GET /v2/models/{m}[/versions/{v}]/stats`` and
``GET /v2/models/{m}[/versions/{v}]/config``; the documents come from
``modelyard.metrics.extensions``. With statistics off (``--no-metrics``) they answer 404 saying
so. These routes go before the KServe model routes: ``/v2/models/stats`` is not a model.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelyard.errors import NotFound
from modelyard.metrics.extensions import Extensions
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.server.http.common import JSONResponse

OFF = "statistics are off (the server was started with --no-metrics)"


def routes(dataplane: DataPlane) -> list[BaseRoute]:
    model = "/v2/models/{model}"
    version = model + "/versions/{version}"

    def extensions() -> Extensions:
        if dataplane.introspection is None:
            raise NotFound(OFF)
        return dataplane.introspection

    # A ModelyardError raised here is answered by the app's handler, in the error shape.
    async def all_stats(request: Request) -> Response:
        return JSONResponse(extensions().statistics())

    async def stats(request: Request) -> Response:
        ref = _ref(request)
        return JSONResponse(extensions().statistics(ref.name, ref.version))

    async def config(request: Request) -> Response:
        ref = _ref(request)
        return JSONResponse(extensions().config(ref.name, ref.version))

    return [
        Route("/v2/models/stats", all_stats, methods=["GET"]),
        Route(model + "/stats", stats, methods=["GET"]),
        Route(version + "/stats", stats, methods=["GET"]),
        Route(model + "/config", config, methods=["GET"]),
        Route(version + "/config", config, methods=["GET"]),
    ]


def _ref(request: Request) -> ModelRef:
    version = request.path_params.get("version")
    return ModelRef(
        request.path_params["model"],
        None if version is None else ModelRef.parse_version(str(version)),
    )
