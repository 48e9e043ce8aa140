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

Async safety: one event loop. The call runs in the request's own task; a watcher task waits
for the connection's end and cancels that task if the client leaves before the answer starts.
The watcher starts ``WATCH_AFTER_S`` after the body was read (or at once if the app itself
waits for the connection's end), so a call answered sooner never creates it; a client that left
earlier is noticed then (uvicorn keeps saying "disconnected"). (A task per call and
``asyncio.wait`` over both cost more per request than everything else the middleware does.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard import deadlines
from modelyard.deadlines import DeadlinePolicy

_SUFFIXES = ("/infer", ":predict", ":classify", ":regress")

WATCH_AFTER_S = 0.05
"""How long after its body a call runs before it watches its connection: longer than most small
requests take, short against the time a dropped request would hold a queue."""


def is_inference(scope: Scope) -> bool:
    """Whether ``scope`` is a REST inference call (the only calls given a deadline)."""
    # The method first: most scopes that are not inference calls stop there (only HTTP
    # scopes have one), and this runs on every request.
    return (
        scope.get("method") == "POST"
        and scope["type"] == "http"
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
        await self._run(scope, _Call(receive, send))

    async def _run(self, scope: Scope, call: _Call) -> None:
        """The app on ``call``, under the request's deadline; returns quietly when the watcher
        dropped the call because its client left."""
        try:
            with deadlines.given(self.policy.rest(time.monotonic())):
                await self._app(scope, call.receive, call.send)
        except asyncio.CancelledError:
            if call.dropped and call.task.uncancel() == 0:
                return  # the client is gone: its queued work was dropped, nothing to answer
            raise  # this middleware was cancelled itself (server stopping)
        finally:
            call.finish()


class _Call:
    """One inference call's view of its connection: ``receive`` and ``send`` for the app, and
    the watcher that cancels ``task`` when the client leaves before the answer starts."""

    __slots__ = ("_gone", "_receive", "_send", "_timer", "body_done", "done", "dropped",
                 "started", "task", "watch")  # fmt: skip

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        task = asyncio.current_task()
        assert task is not None  # an ASGI app always runs in a task
        self.task: asyncio.Task[Any] = task
        self.body_done = False
        self.started = False  # the answer has started: never cancelled from here on
        self.done = False  # the app has returned
        self.dropped = False  # the watcher cancelled the call
        self._gone: asyncio.Future[Message] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.watch: asyncio.Task[None] | None = None

    def gone(self) -> asyncio.Future[Message]:
        """Resolved with the connection's end (made on first use)."""
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        return self._gone

    async def receive(self) -> Message:
        if self.body_done:  # the app asks again after the body: wait for the end
            self.start_watch()
            return await asyncio.shield(self.gone())
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
            if message["type"] == "http.disconnect":
                self.gone().set_result(message)
            else:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(WATCH_AFTER_S, self.start_watch)
        return message

    def start_watch(self) -> None:
        """Start the watcher (once), unless the call has returned or the end is known."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.watch is None and not self.done and not self.gone().done():
            self.watch = asyncio.ensure_future(self._watch())

    def finish(self) -> None:
        """The app has returned: no watcher from now on."""
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self.watch is not None:
            self.watch.cancel()

    async def send(self, message: Message) -> None:
        self.started = True
        await self._send(message)

    async def _watch(self) -> None:
        """Once the whole body is read, wait for the connection's end (or the response's:
        uvicorn then says disconnect too) and resolve ``gone``; cancel the call if the client
        left before its answer started."""
        message = await self._receive()
        while message["type"] != "http.disconnect":  # nothing else comes after the body
            message = await self._receive()
        gone = self.gone()
        if not gone.done():
            gone.set_result(message)
        if not self.started and not self.done:
            self.dropped = True
            self.task.cancel()  # drops its queued work (batcher, worker)
