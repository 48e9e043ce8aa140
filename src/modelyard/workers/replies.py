"""The front end's reading of a worker's replies: frames parsed as their bytes arrive.

``ReplyProtocol`` is the asyncio protocol of the front end's end of a worker socket. Each whole
frame in a chunk the event loop hands it is decoded and passed to ``on_message`` at once, in
the same turn of the loop: the request waiting for it is resumed by its future alone. (Reading
through a ``StreamReader`` and a reader task cost a task step, two ``readexactly`` coroutines
and a wake-up of the reader's waiter per reply, about 10 % of the front end's CPU per request
at one request in flight, issue 18.)

Frames are parsed straight out of the chunk when it starts at a frame boundary (the common
case: tensors become views of the chunk, as they were of ``readexactly``'s bytes); a small frame
split across chunks is gathered in a buffer first; a large one (``LARGE_BODY_BYTES`` or more)
is copied chunk by chunk into a body allocated once at its full size, on which its tensors are
then built (no growing buffer to copy again and again, no copy of the whole body at the end).
A frame that is not one (``ProtocolError``) ends the stream: ``on_end`` is called once, with
the reason and whether the stream was malformed, and nothing more is read. The end of the
connection calls it likewise.

Writes are the transport's; ``drain`` waits while the transport has paused writing (its buffer
above the high-water mark), as ``StreamWriter.drain`` does.

Async safety: everything runs on the event loop; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from modelyard.workers.messages import Message, ProtocolError
from modelyard.workers.protocol import decode_body, split_prefix
from modelyard.workers.wire import PREFIX_BYTES

LARGE_BODY_BYTES = 1 << 20
"""A frame body at least this large that does not arrive in one chunk is read into its own
array (see the module docstring)."""


class ReplyProtocol(asyncio.Protocol):
    """Decodes a worker's frames into messages for ``on_message``; ``on_end(reason,
    malformed)`` once, when the stream ends or breaks. See the module docstring."""

    def __init__(
        self, on_message: Callable[[Message], None], on_end: Callable[[str, bool], None]
    ) -> None:
        self._on_message = on_message
        self._on_end = on_end
        self._buf = bytearray()  # the start of a frame whose end has not arrived yet
        # A large frame being received: its body, the bytes of it received, its layout.
        self._body: bytearray | None = None
        self._filled = 0
        self._layout = (0, 0)  # header_len, n_buffers
        self._ended = False
        self._paused = False
        self._lost = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            rest: bytes | memoryview = data
            if self._body is not None:
                rest = self._fill(data)
                if not rest:
                    return
            if self._buf:
                self._buf += rest
                self._deliver(self._buf)
            else:
                self._deliver(memoryview(rest))
        except ProtocolError as exc:
            self._end(f"it sent a malformed frame ({exc})", malformed=True)

    def _deliver(self, data: bytearray | memoryview) -> None:
        """Decode and pass on every whole frame at the start of ``data``, then keep the rest: a
        small frame's beginning in the buffer, a large one's in a body of its own.

        ``data`` is a chunk just received, as a memoryview (each body is a view of it: no
        copy), or the buffer itself (each body is copied out of it, as the buffer is reused,
        and the frames decoded are removed from it). Slicing does each: a memoryview's slice is
        a view, a bytearray's a copy."""
        end = len(data)
        offset = 0
        try:
            while end - offset >= PREFIX_BYTES:
                header_len, n_buffers, body_len = split_prefix(data, offset)
                start = offset + PREFIX_BYTES
                stop = start + body_len
                if stop > end:
                    if body_len >= LARGE_BODY_BYTES:
                        self._start_body(memoryview(data)[start:], header_len, n_buffers, body_len)
                        offset = end
                    break
                message = decode_body(data[start:stop], header_len, n_buffers)
                offset = stop
                self._on_message(message)
                if self._ended:  # on_message ended the stream (it killed the worker)
                    return
        finally:
            if not self._ended:
                if isinstance(data, bytearray):
                    del data[:offset]
                elif offset < end:
                    self._buf = bytearray(data[offset:])

    def _start_body(
        self, received: memoryview, header_len: int, n_buffers: int, body_len: int
    ) -> None:
        """A large frame whose body has begun (``received``): into its own array."""
        body = bytearray(body_len)
        filled = len(received)
        body[:filled] = received
        received.release()  # the buffer it may view is resized next
        self._body, self._filled, self._layout = body, filled, (header_len, n_buffers)

    def _fill(self, data: bytes) -> memoryview:
        """``data`` into the large frame's body; once it is whole, the frame is delivered. What
        follows the frame in ``data`` (empty while the body is not whole)."""
        body = self._body
        assert body is not None
        view = memoryview(data)
        take = min(len(body) - self._filled, len(view))
        body[self._filled : self._filled + take] = view[:take]
        self._filled += take
        if self._filled < len(body):
            return view[:0]
        self._body = None
        self._on_message(decode_body(body, *self._layout))
        return view[:0] if self._ended else view[take:]

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._end("its connection closed", malformed=False)
        self._wake_drainers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    async def drain(self) -> None:
        """Return once the transport takes writes again; ConnectionResetError once the
        connection is gone."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter
        if self._lost:
            raise ConnectionResetError("connection lost")

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _end(self, reason: str, *, malformed: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._buf = bytearray()
        self._body = None
        self._on_end(reason, malformed)
