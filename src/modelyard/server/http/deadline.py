"""REST inference calls: bounded by their deadline, cancelled when the client goes away.

``InferenceCalls`` is a pure ASGI middleware in front of the REST routes. For an inference call
(``POST .../infer``, ``:predict``, ``:classify``, ``:regress``) it

* fixes the request's deadline when the request arrives: TF Serving's
  ``--rest_api_timeout_in_ms`` when it was given, else ``--request-timeout-ms``
  (``DeadlinePolicy.rest``); the data plane answers 504 once it has passed;
* notices the client disconnecting (ASGI ``http.disconnect``) while the answer is being
  computed, and cancels the call: its request leaves the batcher's queue, and the worker skips
  it if it has not started. Nothing is answered (nobody is there to read it).

Other routes (health, metadata, management) pass through untouched: a management call is never
cancelled halfway.

Async safety: one event loop. The call runs in a task of its own so that it can be cancelled;
the middleware's task watches the connection meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard import deadlines
from modelyard.deadlines import DeadlinePolicy

_SUFFIXES = ("/infer", ":predict", ":classify", ":regress")


def is_inference(scope: Scope) -> bool:
    """Whether ``scope`` is a REST inference call (the only calls given a deadline)."""
    return (
        scope["type"] == "http"
        and scope.get("method") == "POST"
        and str(scope.get("path", "")).endswith(_SUFFIXES)
    )


class InferenceCalls:
    """See the module docstring. ``policy`` is read per request (it may be replaced)."""

    def __init__(self, app: ASGIApp, policy: DeadlinePolicy) -> None:
        self._app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_inference(scope):
            await self._app(scope, receive, send)
            return
        arrived = time.monotonic()
        body_done = asyncio.Event()
        response_started = False
        gone: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        async def receive_body() -> Message:
            if body_done.is_set():  # the app asks again after the body: wait for the end
                return await asyncio.shield(gone)
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done.set()
                if message["type"] == "http.disconnect" and not gone.done():
                    gone.set_result(message)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            response_started = True
            await send(message)

        with deadlines.given(self.policy.rest(arrived)):
            call = asyncio.ensure_future(self._app(scope, receive_body, send_tracked))
        watch = asyncio.ensure_future(_watch(receive, body_done, gone))
        try:
            await asyncio.wait({call, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done() and gone.done() and not response_started:
                call.cancel()  # the client is gone: drop its queued work
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                return
            await call
        finally:
            watch.cancel()
            if not call.done():  # this middleware was cancelled itself (server stopping)
                call.cancel()


async def _watch(receive: Receive, body_done: asyncio.Event, gone: asyncio.Future[Message]) -> None:
    """Once the app has read the whole body, wait for the connection's end and resolve
    ``gone`` with it. (Also resolved, harmlessly, once the response is complete.)"""
    await body_done.wait()
    if gone.done():
        return
    message = await receive()
    while message["type"] != "http.disconnect":  # nothing else comes after the body
        message = await receive()
    if not gone.done():
        gone.set_result(message)
