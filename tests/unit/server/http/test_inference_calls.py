"""The REST inference-call middleware at the ASGI seam: a deadline per call, and the call
cancelled when the client disconnects. Fake receive/send, the real middleware."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from modelyard import deadlines
from modelyard.deadlines import DeadlinePolicy
from modelyard.server.http.deadline import InferenceCalls


class App:
    """Reads the body, records the deadline it was given, then works ``seconds`` and answers."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = False
        self.given: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        self.given = deadlines.given_deadline()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(method: str, path: str) -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": []}


async def _call(app: App, scope: Scope, disconnect_after_s: float | None) -> list[Message]:
    sent: list[Message] = []
    chunks: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]

    async def receive() -> Message:
        if chunks:
            return chunks.pop(0)
        if disconnect_after_s is None:
            await asyncio.Event().wait()  # the client stays
        await asyncio.sleep(disconnect_after_s or 0.0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = InferenceCalls(app, DeadlinePolicy(60_000, rest_timeout_ms=500))
    await asyncio.wait_for(middleware(scope, receive, send), 5)
    return sent


def test_a_client_that_disconnects_cancels_its_call_and_gets_nothing() -> None:
    app = App(seconds=10)
    sent = asyncio.run(_call(app, _scope("POST", "/v2/models/m/infer"), 0.05))
    assert app.cancelled
    assert sent == []


def test_a_call_whose_client_stays_is_answered_with_the_rest_deadline() -> None:
    app = App(seconds=0.01)
    sent = asyncio.run(_call(app, _scope("POST", "/v1/models/m:predict"), None))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (deadline,) = app.given
    assert deadline.budget_ms == 500
    assert deadline.source == "--rest_api_timeout_in_ms"


def test_other_routes_pass_through_without_a_deadline() -> None:
    app = App(seconds=0.01)
    sent = asyncio.run(_call(app, _scope("POST", "/v2/repository/models/m/load"), None))
    assert app.given is None
    assert len(sent) == 2
