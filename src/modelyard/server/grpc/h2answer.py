"""The server's side of an HTTP/2 connection (``http2.Connection`` reads the client's side):
answers, sent only within the client's windows and its SETTINGS, and only while the
transport is not paused (a client that stops reading stops the response, and the connection
stops reading the client until it reads again, so no flood of PING or SETTINGS answers piles
up in memory); when a stream stops counting against the stream limit; GOAWAY and closing.

Writes are *corked* while more than one stream is open: what is written during one turn of
the event loop goes out in one write at the start of the next (``_uncork``), in order, instead
of one system call per answer. At 64 streams in flight a turn answers many of them, and each
``send`` on loopback cost about as much front-end CPU as the rest of the answer (py-spy,
bench/findings.md "Corked writes"); with one stream open every write goes out at once, so a
lone call's latency is unchanged. ``close`` sends what is corked first.

It is the base class of ``http2.Connection``: one object per connection, split in two
modules by direction (what the client may send / what this side may send), not two objects.
"""

from __future__ import annotations

import asyncio

from modelyard.server.grpc.h2wire import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    ConnectionError_,
    Stream,
    frame,
)


class Answering(asyncio.Protocol):
    """What the client allows this side to send (its windows, SETTINGS, whether it reads),
    the answers sent within that, and the streams' lifetime on this side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._last_id = 0  # the highest stream id the client opened
        self._peer_window = 65535  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_frame = 16384
        self._send_window = 65535  # connection-level, for responses
        self._paused = False
        self._closing = False
        self.going_away = False
        self._blocked: dict[int, Stream] = {}  # streams with answer bytes the windows hold back
        self._corked: list[bytes] | None = None  # written this turn, sent at the next (_uncork)
        self.loop: asyncio.AbstractEventLoop | None = None  # the connection's (connection_made)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def pause_writing(self) -> None:
        # The client is not reading: stop reading it too, so what it sends cannot make this
        # side queue answers (PING and SETTINGS ACKs, responses) without bound.
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()
            self._flush_blocked()

    # -- the client's SETTINGS: what it accepts ----------------------------------------------

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad SETTINGS")
        for at in range(0, len(payload), 6):
            key = int.from_bytes(payload[at : at + 2], "big")
            value = int.from_bytes(payload[at + 2 : at + 6], "big")
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:  # RFC 9113 6.9.2
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "a stream window overflows")
            elif key == 0x2:
                if value > 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "ENABLE_PUSH other than 0 or 1")
            elif key == 0x5:
                if not 16384 <= value <= 16777215:
                    raise ConnectionError_(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self._peer_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    # -- answers -----------------------------------------------------------------------------

    def answer(self, stream: Stream, headers: bytes, data: bytes, trailers: bytes) -> None:
        """Send ``headers`` (a HEADERS block), ``data`` (within the windows) and ``trailers``
        (a HEADERS block ending the stream; ``data`` empty and ``headers`` empty: a
        trailers-only answer). Then the stream is closed from this side."""
        if stream.answered or stream.reset or self._closing:
            stream.answered = True
            return
        stream.answered = True
        sid = stream.id
        head = frame(HEADERS, END_HEADERS, sid, headers) if headers else b""
        end = frame(HEADERS, END_HEADERS | END_STREAM, sid, trailers)
        if stream.open:  # answered before the client finished sending: it must stop
            end += frame(RST_STREAM, 0, sid, NO_ERROR.to_bytes(4, "big"))
            stream.open = False  # what it still sends is dropped (and its window refunded)
        if not data:
            self._write(head + end)
            return
        size = len(data)
        if (
            size <= self._send_window
            and size <= stream.send_window
            and size <= self._peer_frame
            and not self._paused
        ):  # the common answer: one DATA frame that the windows allow, all in one write
            self._send_window -= size
            stream.send_window -= size
            self._write(head + frame(DATA, 0, sid, data) + end)
            self._forget(stream)
            return
        stream.pending, stream.pending_end = data, end
        self._send_pending(stream, head)

    def _send_pending(self, stream: Stream, head: bytes = b"") -> None:
        data = stream.pending
        at, total = stream.sent, len(data)
        out = [head] if head else []
        while at < total and not self._paused:
            size = min(total - at, self._send_window, stream.send_window, self._peer_frame)
            if size <= 0:
                break
            out.append(frame(DATA, 0, stream.id, data[at : at + size]))
            at += size
            self._send_window -= size
            stream.send_window -= size
            if len(out) >= 64:  # a large answer goes out in pieces, not one copy of it all
                self._write(b"".join(out))
                out.clear()
        stream.sent = at
        if at >= total:
            data = stream.pending = b""
        if not data:
            out.append(stream.pending_end)
            stream.pending_end = b""
        if out:
            self._write(b"".join(out))
        if data:
            self._blocked[stream.id] = stream
        else:
            self._blocked.pop(stream.id, None)
            self._forget(stream)  # answered: it no longer counts, whether its task has ended

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._paused or self._send_window <= 0:
                return
            self._send_pending(stream)

    def finished(self, stream: Stream) -> None:
        """The stream's handler ended: it no longer counts against the stream limit."""
        stream.task = None
        if stream.reset or not (stream.open or stream.pending or stream.pending_end):
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if stream.task is not None and not stream.task.done() and not stream.answered:
            return  # a handler still running (even on a reset stream) counts against the limit
        if (stream.pending or stream.pending_end) and not stream.reset:
            return  # still sending; forgotten when the last frame is written
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if self.going_away and not self.streams:
            self.close()

    def goaway(self) -> None:
        """No new streams: the server is stopping (the ones started are answered)."""
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, self._last_id.to_bytes(4, "big") + bytes(4)))
        if not self.streams:
            self.close()

    def close(self, code: int | None = None) -> None:
        """Close the connection (after GOAWAY with ``code`` when given)."""
        if self._closing or self.transport is None:
            return
        transport = self.transport
        if code is not None:
            self._write(
                frame(GOAWAY, 0, 0, self._last_id.to_bytes(4, "big") + code.to_bytes(4, "big"))
            )
        self._uncork()  # what was written before the close goes out before it
        self._closing = True
        for stream in self.streams.values():
            stream.reset = True
            if stream.task is not None:
                stream.task.cancel()
        if code is None or not transport.can_write_eof():
            transport.close()
            return
        # Closing a socket with unread input makes the kernel send a reset, and the client may
        # then lose the GOAWAY that says why: end the writing side, read (and drop) what is
        # still coming for a moment, then close.
        transport.write_eof()
        if transport.is_reading() is False:
            transport.resume_reading()
        asyncio.get_running_loop().call_later(1.0, transport.close)

    def _write(self, data: bytes) -> None:
        if self._closing or self.transport is None:
            return
        corked = self._corked
        if corked is not None:
            corked.append(data)
        elif len(self.streams) > 1 and self.loop is not None:
            self._corked = [data]
            self.loop.call_soon(self._uncork)
        else:
            self.transport.write(data)

    def _uncork(self) -> None:
        """Send what was written since the cork was put in (see the module docstring)."""
        corked = self._corked
        if corked is None:
            return
        self._corked = None
        if not self._closing and self.transport is not None:
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))
