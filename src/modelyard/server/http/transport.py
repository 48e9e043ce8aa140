"""The REST server's connections: an answer's status line, headers and body in one write.

uvicorn writes an answer's head (``http.response.start``) and its body (``http.response.body``)
with a ``transport.write`` each, and uvloop sends each at once: two system calls and two TCP
segments per small answer (``TCP_NODELAY``), so a client that waits for the whole answer is
woken twice, on the same two cores as the server (issue 18: at one client, the latency is the
CPU of every hop). ``CoalescingTransport`` holds what is written during one turn of the event
loop and sends it as one write at the end of that turn; the bytes and their order are the same.

``http_protocol()`` is uvicorn's httptools protocol on such a transport, or ``"auto"`` (uvicorn's
own choice, unchanged) where httptools is not installed. That protocol also hands each request's
uvicorn ``RequestResponseCycle`` to the application in the scope (``CYCLE``), so the lean way in
(``modelyard.server.http.lean``) can write a whole answer at once (``answer_now``) instead of
two ASGI messages that uvicorn checks header by header (about a third of uvicorn's own CPU per
request, issue 18).
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """``transport``, with the writes of one event-loop turn joined into one.

    Writes are held until the callback scheduled by the first of them runs (the end of the
    turn: a ``100 Continue`` still goes out before the loop waits for the body it asks for);
    ``close`` sends what is held first; ``abort`` drops it, as the transport's own buffer is
    dropped. Everything else is the transport's own.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now (nothing when the connection is closing)."""
        held = self._held
        self._held = None
        if held is None or self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        held = self._held
        pending = sum(len(data) for data in held) if held is not None else 0
        return self._transport.get_write_buffer_size() + pending

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


CYCLE = "modelyard.cycle"
"""The scope key under which ``http_protocol()``'s protocol puts the request's uvicorn cycle."""


def answer_now(cycle: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """Write the whole answer (status line, uvicorn's default headers and ``headers``, body) on
    ``cycle`` as uvicorn's ``send`` of a start and a body message would, in one write, and
    leave the cycle in the state those messages leave it; False (nothing done) where only
    ``send`` can (an answer under way, writing paused). ``headers`` must be the application's
    own, known to be valid (names and values with no line breaks, a content-length that is
    ``len(body)``); a POST's answer (a body, not HEAD). Nothing is written to a client that is
    gone (as ``send``)."""
    if cycle.response_started or cycle.flow.write_paused:
        return False
    if cycle.disconnected:
        return True
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    content = [_STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        content += (name, b": ", value, b"\r\n")
    for name, value in headers:
        content += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        content.append(b"connection: close\r\n")
    content += (b"\r\n", body)
    cycle.chunked_encoding = False
    cycle.expected_content_length = 0
    cycle.transport.write(b"".join(content))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


_STATUS_LINE: dict[int, bytes] = {}


def http_protocol() -> type[asyncio.Protocol] | str:
    """What uvicorn's ``Config(http=...)`` gets: httptools on a ``CoalescingTransport``, or
    ``"auto"`` without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol, as before
        return "auto"
    _STATUS_LINE.update(STATUS_LINE)

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            coalescing = CoalescingTransport(transport, self.loop)
            super().connection_made(coalescing)  # type: ignore[arg-type]

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # not an upgrade
                self.scope[CYCLE] = cycle  # type: ignore[literal-required]

        def on_response_complete(self) -> None:
            # The answer is whole (uvicorn calls this right after its last write): send it
            # now rather than at the end of the turn.
            transport = self.transport
            if isinstance(transport, CoalescingTransport):
                transport.flush()
            super().on_response_complete()

    return CoalescingHttpToolsProtocol
