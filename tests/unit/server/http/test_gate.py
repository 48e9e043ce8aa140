"""The REST gate: a route nobody listed as open is guarded, whatever it does.

No sockets: httpx's ASGITransport calls the app in process."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from modelyard.management.access import Gate
from modelyard.server.http.app import gate_routes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _changed(request: Request) -> Response:
    return PlainTextResponse("changed")


def _client(routes: list[BaseRoute], gate: Gate) -> httpx.AsyncClient:
    app = Starlette(routes=gate_routes(routes, gate))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_a_new_route_is_guarded_until_listed_as_open() -> None:
    routes: list[BaseRoute] = [
        Route("/new/change", _changed, methods=["POST"]),
        Route("/v2/health/live", _changed, methods=["GET"]),
    ]
    async with _client(routes, Gate("secret")) as client:
        refused = await client.post("/new/change")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "error" in refused.json()
        allowed = await client.post("/new/change", headers={"authorization": "Bearer secret"})
        assert allowed.text == "changed"
        assert (await client.get("/v2/health/live")).text == "changed"  # listed as open


async def test_management_off_answers_403() -> None:
    routes: list[BaseRoute] = [Route("/new/change", _changed, methods=["POST"])]
    async with _client(routes, Gate(None)) as client:
        response = await client.post("/new/change", headers={"authorization": "Bearer secret"})
    assert response.status_code == 403
    assert "--management-token" in response.json()["error"]


def test_a_route_that_cannot_be_classified_is_refused_at_start_up() -> None:
    with pytest.raises(TypeError, match="classify"):
        gate_routes([Mount("/static", routes=[])], Gate("secret"))
