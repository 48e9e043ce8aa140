"""The REST server's connections: an answer's status line, headers and body in one write.

uvicorn writes an answer's head (``http.response.start``) and its body (``http.response.body``)
with a ``transport.write`` each, and uvloop sends each at once: two system calls and two TCP
segments per small answer (``TCP_NODELAY``), so a client that waits for the whole answer is
woken twice, on the same two cores as the server (issue 18: at one client, the latency is the
CPU of every hop). ``CoalescingTransport`` holds what is written during one turn of the event
loop and sends it as one write at the end of that turn; the bytes and their order are the same.

``http_protocol()`` is uvicorn's httptools protocol on such a transport, or ``"auto"`` (uvicorn's
own choice, unchanged) where httptools is not installed; given the application's
``LeanInference``, that protocol also takes the hot inference calls itself, without an ASGI
cycle (``modelyard.server.http.entry``), where uvicorn is a version that entry was tested with.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.server.http.lean import LeanInference

log = logging.getLogger(__name__)


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

    def write_now(self, data: bytes) -> None:
        """Send what is held and ``data`` now, in one write where nothing is held."""
        held = self._held
        if held is not None:
            self._held = None
            data = b"".join([*held, data])
        self._transport.write(data)

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


def http_protocol(lean: LeanInference | None = None) -> type[asyncio.Protocol] | str:
    """What uvicorn's ``Config(http=...)`` gets: httptools on a ``CoalescingTransport`` (with
    the protocol's own entry for ``lean``'s inference calls, ``modelyard.server.http.entry``,
    when uvicorn is what that entry was tested with), or ``"auto"`` without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's h11 protocol, as before
        return "auto"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            coalescing = CoalescingTransport(transport, self.loop)
            super().connection_made(coalescing)  # type: ignore[arg-type]

        def on_response_complete(self) -> None:
            # The answer is whole (uvicorn calls this right after its last write): send it
            # now rather than at the end of the turn.
            transport = self.transport
            if isinstance(transport, CoalescingTransport):
                transport.flush()
            super().on_response_complete()

    if lean is None:
        return CoalescingHttpToolsProtocol
    from modelyard.server.http import entry

    why = entry.usable(CoalescingHttpToolsProtocol)
    if why is not None:
        log.info("REST inference calls take uvicorn's ASGI path: %s", why)
        return CoalescingHttpToolsProtocol
    return entry.hot_protocol(CoalescingHttpToolsProtocol, lean, STATUS_LINE)
