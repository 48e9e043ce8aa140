"""The ASGI application: TF Serving and KServe v2 REST routes over one data plane."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.errors import Internal, ModelyardError
from modelyard.management import Management
from modelyard.metrics.server_metrics import CONTENT_TYPE
from modelyard.server.dataplane import DataPlane
from modelyard.server.http import kserve, management, status, tfserving, ui
from modelyard.server.http.common import error_response
from modelyard.server.http.status import StatusSource

log = logging.getLogger(__name__)


async def _on_modelyard_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelyardError)
    return error_response(exc)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # A bug, never the client's fault: log it with the traceback and answer 500 in the
    # protocol's error shape instead of Starlette's plain-text page.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(Internal(f"internal error: {type(exc).__name__}: {exc}"))


def _metrics_endpoint(dataplane: DataPlane) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        if dataplane.metrics is None:
            return Response("metrics are off\n", status_code=404, media_type="text/plain")
        return Response(dataplane.metrics.exposition(), media_type=CONTENT_TYPE)

    return metrics


def build_app(
    dataplane: DataPlane,
    *,
    max_request_bytes: int,
    status_source: StatusSource | None = None,
    manager: Management | None = None,
    management_token: str | None = None,
) -> Starlette:
    """The REST routes. The management routes are always there: without ``management_token``
    they answer 403 with how to turn them on."""
    routes = [
        Route("/metrics", _metrics_endpoint(dataplane), methods=["GET"]),
        *ui.routes(),
        *tfserving.routes(dataplane, max_request_bytes=max_request_bytes),
        *kserve.routes(dataplane, max_request_bytes=max_request_bytes),
        *(status.routes(status_source) if status_source is not None else []),
        *management.routes(manager, management_token),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={ModelyardError: _on_modelyard_error, Exception: _on_unexpected},
    )
