"""``GET /``: the live page, each device as a memory bar with its models.

The page is static; its script polls ``/modelyard/v1/status`` and ``/v2/health/ready`` every 2 s,
so it shows what the status API shows and needs no server-side templating.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route


def routes() -> list[Route]:
    page = (resources.files("modelyard.server") / "static" / "index.html").read_bytes()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return [Route("/", index, methods=["GET"])]
