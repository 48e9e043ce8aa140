"""KServe v2 routes over a real DataPlane with a fake servable: statuses no real model produces.

No sockets: httpx's ASGITransport calls the ASGI app in process (anyio's pytest plugin runs the
async tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette

from modelyard.config.schema import Platform
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
from modelyard.lifecycle.states import ModelState
from modelyard.server.dataplane import DataPlane
from modelyard.server.http import kserve
from modelyard.server.http.app import build_app
from modelyard.testing.dataplane import DOUBLE_SIGNATURE, DoublingServable

SIGNATURE = DOUBLE_SIGNATURE


class _Servable(DoublingServable):
    """Doubles its input, or fails the way a buggy backend would when x[0] is negative."""

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        if inputs["x"][0] < 0:
            raise RuntimeError("backend exploded")
        return await super().infer(inputs, signature_name)


@pytest.fixture
def dataplane() -> DataPlane:
    registry = ModelRegistry()
    ready = VersionEntry(VersionKey("double", 1), Platform.ONNX, signature=SIGNATURE)
    ready.transition(ModelState.LOADING)
    ready.replicas = [Replica(_Servable(), "cpu")]
    ready.transition(ModelState.AVAILABLE)
    registry.add(ready)
    loading = VersionEntry(VersionKey("slow", 1), Platform.ONNX)
    loading.transition(ModelState.LOADING)
    registry.add(loading)
    return DataPlane(registry)


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(dataplane: DataPlane) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=kserve.routes(dataplane, max_request_bytes=1024))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as test_client:
        yield test_client


async def test_health_is_503_until_started_and_while_stopping(
    client: httpx.AsyncClient, dataplane: DataPlane
) -> None:
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 503
    dataplane.started = True
    assert (await client.get("/v2/health/ready")).status_code == 200
    dataplane.stopping = True
    assert (await client.get("/v2/health/ready")).status_code == 503


async def test_a_loading_model_is_not_ready_and_says_why_on_infer(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v2/models/slow/ready")).status_code == 503
    response = await client.post(
        "/v2/models/slow/infer",
        json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
    )
    assert response.status_code == 503
    assert "LOADING" in response.json()["error"]


async def test_an_unexpected_exception_is_a_500_and_the_next_request_works(
    client: httpx.AsyncClient,
) -> None:
    async def infer(value: float) -> tuple[int, dict[str, object]]:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [value]}]}
        response = await client.post("/v2/models/double/infer", json=body)
        return response.status_code, response.json()

    status, body = await infer(-1)
    assert status == 500
    assert body == {"error": "internal error: RuntimeError: backend exploded"}
    status, body = await infer(1.5)
    assert status == 200
    assert body["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1], "data": [3.0]}]


async def test_a_bug_under_any_route_is_a_500_and_never_reaches_the_server(
    dataplane: DataPlane,
) -> None:
    """Over the whole app, TF Serving's route included. An exception that escaped to the
    server made uvicorn close the connection: the client's next request on it failed.
    ASGITransport re-raises what escapes, so such an escape fails this test."""
    app = build_app(dataplane, max_request_bytes=1024)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/v1/models/double:predict", json={"instances": [-1.0]})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: RuntimeError: backend exploded"}
        response = await client.post("/v1/models/double:predict", json={"instances": [2.0]})
        assert response.json() == {"predictions": [4.0]}


async def test_declared_oversize_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/double/infer", content=b" " * 2048)
    assert response.status_code == 413
    assert "limit of" in response.json()["error"]
