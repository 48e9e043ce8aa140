"""``GET /``: the live page: each device as a memory bar with its models and its worker, and
each model version's traffic (requests per second, p50/p99 latency, errors, in flight).

The page is static and self-contained (no external assets); its script polls
``/modelyard/v1/status`` and ``/v2/health/ready`` every 2 s and ``/modelyard/v1/traffic`` every
second, and computes rates and quantiles from the differences between traffic documents, the way
Prometheus computes them from ``/metrics``. ``GET /modelyard/v1/traffic`` answers 404 when
statistics are off (``--no-metrics``); the page then says so.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from modelyard.errors import NotFound
from modelyard.server.dataplane import DataPlane
from modelyard.server.http.common import JSONResponse


def routes(dataplane: DataPlane) -> list[Route]:
    page = (resources.files("modelyard.server") / "static" / "index.html").read_bytes()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    async def traffic(request: Request) -> Response:
        if dataplane.introspection is None:
            raise NotFound("statistics are off (the server was started with --no-metrics)")
        return JSONResponse(dataplane.introspection.traffic())

    return [
        Route("/", index, methods=["GET"]),
        Route("/modelyard/v1/traffic", traffic, methods=["GET"]),
    ]
