"""The REST router remembers each path's route: a path asked again gets the answer the route
walk gives, whatever was asked before (other methods, 405s, 404s, more paths than it keeps).

No sockets: httpx's ASGITransport calls the app in process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from modelyard.server.http.app import _RememberingRouter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _echo(tag: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(f"{tag} {dict(request.path_params)}")

    return endpoint


def _client(limit: int = 4096) -> httpx.AsyncClient:
    routes: list[BaseRoute] = [
        Route("/v1/models/{path:path}", _echo("get"), methods=["GET"]),
        Route("/v1/models/{path:path}", _echo("post"), methods=["POST"]),
        Route("/v2/models/{model}/infer", _echo("infer"), methods=["POST"]),
        Route("/only-get", _echo("only-get"), methods=["GET"]),
    ]
    app = Starlette()
    app.router = _RememberingRouter(routes)
    app.router.LIMIT = limit
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_repeated_paths_get_the_same_answers_in_any_order() -> None:
    async with _client() as client:
        for _ in range(3):
            assert (await client.post("/v1/models/m:predict")).text == "post {'path': 'm:predict'}"
            assert (await client.get("/v1/models/m:predict")).text == "get {'path': 'm:predict'}"
            assert (await client.post("/v2/models/a/infer")).text == "infer {'model': 'a'}"
            assert (await client.post("/v2/models/b/infer")).text == "infer {'model': 'b'}"
            refused = await client.post("/only-get")
            assert refused.status_code == 405
            assert (await client.get("/only-get")).text == "only-get {}"
            assert (await client.get("/nowhere")).status_code == 404


async def test_more_paths_than_it_keeps_still_route_each_right() -> None:
    async with _client(limit=3) as client:
        for round_ in range(2):
            for i in range(8):
                answer = await client.post(f"/v2/models/m{i}/infer")
                assert answer.text == f"infer {{'model': 'm{i}'}}", round_
