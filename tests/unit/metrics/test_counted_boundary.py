"""The REST boundary when only statistics are on (``CountedInferenceCalls``, one layer with the
deadline middleware): every call counted once, a bug's 500 included. In process, over
httpx's ASGITransport."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from modelyard.errors import Code
from modelyard.observability.boundary import Observer
from modelyard.server.http.app import build_app
from modelyard.testing.dataplane import DOUBLE_KEY, doubling_dataplane

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_each_call_is_counted_once_a_bugs_500_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataplane, metrics = doubling_dataplane()
    app = build_app(dataplane, max_request_bytes=1024, observer=Observer(metrics.call_ended))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/v2/models/double/infer", json=body)).status_code == 200
        assert (await client.post("/v2/models/nothing/infer", json=body)).status_code == 404

        def bug(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug before any route")  # answered 500 by _AnswerBugs

        monkeypatch.setattr(type(dataplane.deadlines), "rest", bug)
        assert (await client.post("/v2/models/double/infer", json=body)).status_code == 500
    stats = metrics.book.get(DOUBLE_KEY)
    assert stats is not None
    assert (stats.success_count, stats.fail_count) == (1, 1)
    assert stats.failures == {Code.INTERNAL: 1}
    assert stats.outcomes == {("kserve_rest", "OK"): 1, ("kserve_rest", "INTERNAL"): 1}
    assert metrics.book.rejected == {("kserve_rest", Code.NOT_FOUND): 1}
