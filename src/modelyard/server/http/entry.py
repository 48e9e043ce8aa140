"""The REST server's own entry for inference calls, at the connection's protocol.

At one request in flight the latency is the sum of the CPU on the critical path (issue 18), and
for a tiny model uvicorn's per-request machinery (the ASGI scope, a ``RequestResponseCycle``
with its ``asyncio.Event``, the ``run_asgi`` task, its proxy-headers middleware, ``receive`` and
``send`` messages checked header by header) and our ASGI adapters over it cost about as much
as decoding the request. ``hot_protocol`` makes uvicorn's httptools protocol recognise the hot
calls itself, when their head is parsed (``lean.hot_lane``: ``POST .../models/{m}...:predict``
and ``POST /v2/models/{m}[/versions/{v}]/infer``), collect their body, and when the body is
whole run ``LeanInference.respond`` (the same answer functions, error mapping, REST deadline
and counting as the ASGI way in) in a task of its own; the answer's status line, headers and
body go out in one write.

What uvicorn does at a response's end is done the same way, mostly by uvicorn's own code: the
call stands in ``self.cycle`` as a ``HotCall``, which has the four attributes uvicorn's
protocol reads on a cycle (``response_complete``, ``disconnected``, ``keep_alive``,
``message_event.set()``), so

* a request pipelined behind it is queued by uvicorn (reading paused) and started by
  ``on_response_complete``, which this entry calls once its answer is written, in order;
* ``on_response_complete`` also counts the request, resumes reading and arms the keep-alive
  timer; an HTTP/1.0 request or one that says ``Connection: close`` is answered with
  ``connection: close`` and the connection closed;
* the server's shutdown (``shutdown``) turns keep-alive off for a call in flight, which then
  closes its connection after its answer; the call's task is in the server's task set, so a
  graceful shutdown waits for it (and cancels it past the grace period: the connection is
  closed without an answer, as uvicorn's own tasks are);
* a client that disconnects while its call runs cancels the call at once (its queued work is
  dropped) and nothing is written;
* a body over ``--max-request-bytes`` is answered 413 as soon as its declared length (or what
  arrived) passes the limit; the rest of it is read and dropped, as uvicorn does, and the
  connection stays usable;
* writing waits for the transport to drain first when the client stopped reading.

Everything else takes uvicorn's own path unchanged, and the ASGI application there (which has
its own lean way in, ``modelyard.server.http.lean``): other routes and verbs, a request
pipelined behind another that is not answered yet, ``Expect: 100-continue``, an upgrade, a path
with ``%``-escapes or in absolute form, a ``root_path``, a concurrency limit, and every call when
the observer wants each call's status (no ``LeanInference`` then).

This relies on uvicorn internals (``REQUIRED``); ``usable`` checks them once, at start-up,
with the version inside the tested range (``TESTED``), and ``http_protocol`` falls back to
uvicorn's plain path when anything is missing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from modelyard.observability.calls import Lane
from modelyard.server.http.lean import LeanInference, hot_lane

log = logging.getLogger(__name__)

TESTED = ((0, 29), (0, 54))
"""The oldest and newest uvicorn (major, minor) this entry was tested with, both included."""

REQUIRED = {
    "protocol": (
        "loop", "parser", "url", "headers", "expect_100_continue", "cycle", "pipeline",
        "server_state", "tasks", "transport", "flow", "limit_concurrency", "root_path",
        "on_headers_complete", "on_body", "on_message_complete", "on_response_complete",
        "connection_lost", "shutdown",
    ),
    "parser": ("get_method", "get_http_version", "should_keep_alive", "should_upgrade"),
    "server_state": ("default_headers", "total_requests", "tasks", "connections"),
    "flow": ("write_paused", "drain", "resume_reading"),
}  # fmt: skip
"""What the entry reads or calls on uvicorn's objects (beyond ``asyncio.Protocol``'s own)."""


class _NoEvent:
    __slots__ = ()

    def set(self) -> None:
        """uvicorn's protocol wakes a cycle's reader; a hot call has none."""


_NO_EVENT = _NoEvent()
_CLOSE = (b"connection", b"close")


class HotCall:
    """One inference call taken by the entry: what uvicorn's protocol reads on ``self.cycle``
    (see the module docstring), and the call's own state. Owned by its connection's protocol;
    one event loop."""

    __slots__ = ("answering", "chunks", "disconnected", "dropped", "headers", "keep_alive",
                 "lane", "path", "response_complete", "said_close", "size", "task")  # fmt: skip

    message_event = _NO_EVENT

    def __init__(
        self,
        lane: Lane,
        path: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        said_close: bool,
    ) -> None:
        self.lane = lane
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive  # False: the connection closes after the answer
        self.said_close = said_close  # the client said "connection: close"
        self.chunks: list[bytes] = []
        self.size = 0
        self.task: asyncio.Task[None] | None = None  # started once the body is whole
        self.answering = False  # the answer is being written: never cancelled from here on
        self.dropped = False  # cancelled because the client left
        self.disconnected = False
        self.response_complete = False


def _version() -> tuple[int, int] | None:
    """uvicorn's (major, minor), None when it is not a release number."""
    import uvicorn

    try:
        major, minor = uvicorn.__version__.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def usable(base: type[Any]) -> str | None:
    """None when uvicorn (its version and ``REQUIRED``, on a protocol made here) is what the
    entry was tested with, else why not (checked once, at start-up)."""
    import uvicorn
    from uvicorn.config import Config
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.server import ServerState

    version = _version()
    if version is None:
        return f"uvicorn's version {uvicorn.__version__!r} is not a release"
    if not TESTED[0] <= version <= TESTED[1]:
        return f"uvicorn {uvicorn.__version__} is outside the tested {TESTED[0]}..{TESTED[1]}"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """A placeholder: the protocol made here serves nothing."""

    try:
        protocol = base(
            config=Config(app, log_config=None), server_state=ServerState(), app_state={},
            _loop=asyncio.new_event_loop(),
        )  # fmt: skip
        protocol.loop.close()
        protocol.on_message_begin()  # what a request's start sets (url, headers, ...)
        parts = {
            "protocol": protocol,
            "parser": protocol.parser,
            "server_state": protocol.server_state,
            "flow": FlowControl(None),  # type: ignore[arg-type]
        }
    except Exception as exc:  # whatever changed, the plain path still serves
        return f"uvicorn's protocol could not be made as expected: {type(exc).__name__}: {exc}"
    for part, names in REQUIRED.items():
        missing = [name for name in names if not hasattr(parts[part], name)]
        if missing:
            return f"uvicorn {uvicorn.__version__}'s {part} has no {', '.join(missing)}"
    return None


def hot_protocol(
    base: type[Any], lean: LeanInference, status_line: dict[int, bytes]
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools protocol, on a ``CoalescingTransport``) with the entry
    for ``lean``'s calls; ``status_line``: uvicorn's status lines by code."""
    limit = lean.limit
    # uvicorn before 0.53 says "connection: close" only to a client that said it, and keeps
    # every other HTTP/1.1 connection open; the entry answers as the uvicorn it runs on.
    echo_close = (_version() or (0, 0)) < (0, 53)

    class HotHttpToolsProtocol(base):  # type: ignore[misc]
        cycle: Any  # uvicorn's RequestResponseCycle, or a HotCall standing in for one

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._hot: HotCall | None = None
            self._takes = self.limit_concurrency is None and not self.root_path

        def on_headers_complete(self) -> None:
            if not self._takes or not self._take():
                super().on_headers_complete()

        def _take(self) -> bool:
            """Take the request whose head was just parsed, if it is a hot call that can be
            served here (see the module docstring)."""
            cycle = self.cycle
            if (cycle is not None and not cycle.response_complete) or self.pipeline:
                return False  # pipelined behind an unanswered one: uvicorn keeps the order
            parser = self.parser
            if self.expect_100_continue or parser.get_method() != b"POST":
                return False
            url: bytes = self.url
            if url[:1] != b"/" or b"%" in url or parser.should_upgrade():
                return False
            query = url.find(b"?")
            try:
                path = (url if query < 0 else url[:query]).decode("ascii")
            except UnicodeDecodeError:
                return False  # uvicorn answers it as it always did
            lane = hot_lane(path)
            if lane is None:
                return False
            headers = self.headers
            if echo_close:
                said_close = _CLOSE in headers
                keep_alive = parser.get_http_version() != "1.0" and not said_close
            else:
                said_close = False
                keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            hot = self.cycle = self._hot = HotCall(lane, path, headers, keep_alive, said_close)
            for name, value in hot.headers:
                if name == b"content-length":  # over the limit: refused without the body
                    if value.isdigit() and int(value) > limit:
                        self._start(hot)
                    break
            return True

        def on_body(self, body: bytes) -> None:
            hot = self._hot
            if hot is None or hot is not self.cycle:
                super().on_body(body)
            elif hot.task is None:  # else refused already: the rest is dropped
                hot.chunks.append(body)
                hot.size += len(body)
                if hot.size > limit:
                    self._start(hot)  # 413 without reading more

        def on_message_complete(self) -> None:
            hot = self._hot
            if hot is None or hot is not self.cycle:
                super().on_message_complete()
            elif hot.task is None:
                self._start(hot)

        def _start(self, hot: HotCall) -> None:
            chunks = hot.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            hot.chunks = []
            task = hot.task = self.loop.create_task(self._serve(hot, body))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        async def _serve(self, hot: HotCall, body: bytes) -> None:
            try:
                status, headers, answer = await lean.respond(
                    hot.lane, hot.path, hot.headers, None, body
                )
            except asyncio.CancelledError:
                task = hot.task
                assert task is not None
                if hot.dropped and task.uncancel() == 0:
                    return  # the client is gone: its queued work was dropped
                self.transport.close()  # the server stopped waiting: no answer
                raise
            hot.answering = True
            if self.flow.write_paused and not hot.disconnected:
                await self.flow.drain()  # the client stopped reading: wait (as uvicorn does)
            transport = self.transport
            if not hot.disconnected and not transport.is_closing():
                content = [status_line[status]]
                for name, value in self.server_state.default_headers:
                    content += (name, b": ", value, b"\r\n")
                for name, value in headers:
                    content += (name, b": ", value, b"\r\n")
                if hot.said_close if echo_close else not hot.keep_alive:
                    content.append(b"connection: close\r\n")
                content += (b"\r\n", answer)
                transport.write_now(b"".join(content))  # a CoalescingTransport
            hot.response_complete = True
            self._hot = None
            if not hot.keep_alive:
                transport.close()
            self.on_response_complete()  # next pipelined request, or the keep-alive timer

        def connection_lost(self, exc: Exception | None) -> None:
            hot = self._hot
            if hot is not None and not hot.response_complete:
                hot.disconnected = True
                task = hot.task
                if task is not None and not hot.answering and not task.done():
                    hot.dropped = True
                    task.cancel()  # drops its queued work (batcher, worker)
            super().connection_lost(exc)

    return HotHttpToolsProtocol
