"""A small HTTP/2 server connection for unary gRPC calls, on the asyncio event loop.

Why it exists: grpc.aio's Python layer costs 430-590 µs of CPU per call on a 2-core box
(``bench/findings.md``), more than modelyard's whole REST front end; this layer parses frames
in ``data_received`` and answers with precomputed header bytes, so a unary call costs about
what an HTTP/1 request costs. gRPC's semantics (messages, statuses, the servicer context) are
``modelyard.server.grpc.fast``'s; this module knows only HTTP/2.

What it does, per RFC 9113, for a server that only answers requests:

- Frames: the client preface, SETTINGS (+ACK), PING (+ACK), HEADERS/CONTINUATION (HPACK
  decoded by the ``hpack`` package, whose dynamic table it keeps in step), DATA, WINDOW_UPDATE,
  RST_STREAM, GOAWAY, PRIORITY (ignored). Responses never use the dynamic table (literals
  "without indexing"), so nothing has to be tracked for the encoder.
- A request is handed to the application once its stream ends (``Stream.body`` complete).
- Flow control both ways: the client's DATA is bounded by the windows advertised here and
  replenished as it is buffered; responses are sent only within the client's windows
  (``h2answer.Answering``, the sending side of the same connection, this class's base).
- Limits (``Limits``): concurrent streams (a stream counts until its handler ends, even when
  the client reset it, so rapid reset cannot run more handlers than the limit), header list
  size (decoded and raw, so an endless CONTINUATION is cut), message size, request bytes
  buffered on unfinished streams (a few messages' worth per connection, not one per stream),
  and a budget of client resets (CVE-2023-44487), which the stream errors a client provokes
  spend too. Malformed requests (RFC 9113 8.2-8.3: no :path, upper case or
  connection-specific fields) are stream errors. A client that breaks the protocol gets GOAWAY
  and the connection is closed; other connections never notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from modelyard.server.grpc.h2answer import Answering
from modelyard.server.grpc.h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_WINDOW,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    ConnectionError_,
    HeaderDecoder,
    Limits,
    Stream,
    frame,
    unpad,
)

Application = Callable[["Connection", Stream], None]
"""Called when a stream's request is complete; it answers with ``Connection.answer``."""


class Connection(Answering):
    """One client connection. ``application`` is called for each complete request; it must
    end by calling ``answer`` (or the stream is reset) and ``finished`` when its handler ends.
    This module reads the client; what is sent back, and when, is ``Answering``'s."""

    def __init__(self, application: Application, limits: Limits, registry: set[Connection]):
        super().__init__()
        self._app = application
        self.limits = limits
        self._registry = registry
        self.peer = ""
        self._buf = bytearray()
        self._preface = False
        self._headers = HeaderDecoder(limits.max_header_list_bytes)
        self._continuing: Stream | None = None
        self._block = bytearray()
        self._end_after_block = False
        self._recv_window = limits.connection_window
        self._recv_unacked = 0
        self._resets = float(limits.reset_burst)
        self._reset_at = 0.0
        # Unfinished request bodies on one connection: a few messages' worth, not one per stream.
        self._budget = limits.unfinished_bodies_bytes or 4 * (limits.max_message_bytes + 5)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        # Remembered for the application's calls: on Python 3.11 get_running_loop() is a
        # getpid() system call, once per connection here instead of once per request.
        self.loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            family = "ipv6" if ":" in str(peer[0]) else "ipv4"
            self.peer = (
                f"{family}:{peer[0]}:{peer[1]}"
                if family == "ipv4"
                else (f"ipv6:[{peer[0]}]:{peer[1]}")
            )
        self._registry.add(self)
        limits = self.limits
        settings = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big")
            for key, value in (
                (0x2, 0),  # ENABLE_PUSH
                (0x3, limits.max_concurrent_streams),
                (0x4, limits.stream_window),
                (0x6, limits.max_header_list_bytes),
            )
        )
        increment = limits.connection_window - 65535
        self.transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._registry.discard(self)
        for stream in self.streams.values():
            stream.reset = True
            if stream.task is not None:
                stream.task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # closing after GOAWAY: what still comes is dropped
        buf = self._buf
        buf += data
        pos = 0
        try:
            if not self._preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(bytes(buf)):
                        raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                    return
                if buf[:24] != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                self._preface = True
                pos = 24
            size = len(buf)
            while size - pos >= 9 and not self._closing:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > MAX_FRAME:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "frame larger than allowed")
                end = pos + 9 + length
                if end > size:
                    break
                ftype, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : end])
                pos = end
                if self._continuing is not None and ftype != CONTINUATION:
                    raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
                if ftype == DATA:
                    self._on_data(flags, sid, payload)
                elif ftype == HEADERS:
                    self._on_headers(flags, sid, payload)
                elif ftype == CONTINUATION:
                    self._on_continuation(flags, sid, payload)
                elif ftype == WINDOW_UPDATE:
                    self._on_window_update(sid, payload)
                elif ftype == PING:
                    if length != 8 or sid != 0:
                        raise ConnectionError_(FRAME_SIZE_ERROR, "bad PING")
                    if not flags & ACK:
                        self._write(frame(PING, ACK, 0, payload))
                elif ftype == SETTINGS:
                    self._on_settings(flags, sid, payload)
                elif ftype == RST_STREAM:
                    self._on_reset(sid, payload)
                elif ftype == GOAWAY:
                    self.going_away = True
                    if not self.streams:
                        self.close()
                elif ftype == PUSH_PROMISE:
                    raise ConnectionError_(PROTOCOL_ERROR, "a client may not push")
                # PRIORITY and unknown types are ignored, as the RFC says.
        except ConnectionError_ as exc:
            self.close(exc.code)
            return
        del buf[:pos]

    # -- frames ------------------------------------------------------------------------------

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or sid % 2 == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on a bad stream id")
        payload = unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:  # padding left no room for the priority fields (RFC 9113 6.2)
                raise ConnectionError_(PROTOCOL_ERROR, "HEADERS padding too long")
            payload = payload[5:]
        if sid <= self._last_id:  # trailers of a request, or a stream already gone
            stream = self.streams.get(sid)
            if stream is None or not stream.open:
                raise ConnectionError_(STREAM_CLOSED, "HEADERS on a closed stream")
        else:
            self._last_id = sid
            stream = Stream(sid, self._peer_window, self.limits.stream_window)
            if self.going_away:  # sent before the client saw GOAWAY: it may retry elsewhere
                stream.answered = stream.reset = True
                self._write(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
            elif len(self.streams) >= self.limits.max_concurrent_streams:
                stream.answered = stream.reset = True
                self._write(frame(RST_STREAM, 0, sid, REFUSED_STREAM.to_bytes(4, "big")))
                self._spend_reset()  # refused streams are as cheap to send as resets
            else:
                self.streams[sid] = stream
        self._block = bytearray(payload)
        self._end_after_block = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._headers_done(stream)
        else:
            self._continuing = stream
            self._check_block()

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        stream = self._continuing
        if stream is None or stream.id != sid:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION out of place")
        self._block += payload
        self._check_block()
        if flags & END_HEADERS:
            self._continuing = None
            self._headers_done(stream)

    def _check_block(self) -> None:
        if len(self._block) > self.limits.max_header_list_bytes:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header block larger than allowed")

    def _headers_done(self, stream: Stream) -> None:
        block = bytes(self._block)
        self._block = bytearray()
        fields, as_request, as_trailers = self._headers.decode(block)
        if stream.answered:  # refused at the door; its headers only had to be decoded
            return
        if (as_trailers if stream.headers else as_request) is not None or (
            stream.headers and not self._end_after_block  # a second HEADERS must end the stream
        ):
            self._reset_stream(stream, PROTOCOL_ERROR)  # malformed (RFC 9113 8.1): a stream error
            return
        if not stream.headers:  # else trailers: gRPC clients send none; accepted and dropped
            stream.headers = fields
        if self._end_after_block:
            self._request_complete(stream)

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        length = len(payload)
        self._recv_window -= length
        if self._recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._recv_unacked += length
        if self._recv_unacked >= self.limits.connection_window // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, self._recv_unacked.to_bytes(4, "big")))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or not stream.open:
            if sid == 0 or sid > self._last_id:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream is not None and not stream.answered:  # half-closed (remote): RFC 9113 5.1
                self._reset_stream(stream, STREAM_CLOSED)
            return  # a stream already answered or reset: its bytes are dropped
        stream.recv_window -= length
        if stream.recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        if stream.task is not None:  # started before its end (the body went past the limit):
            if flags & END_STREAM:  # the rest is dropped, and never starts the handler again
                self._request_complete(stream)
            return
        if not stream.answered:
            stream.body += unpad(flags, payload)
        if flags & END_STREAM:
            self._request_complete(stream)
            return
        if len(stream.body) > self.limits.max_message_bytes + 5 and not stream.answered:
            self._request_complete(stream, too_large=True)
            return
        if len(self.streams) > 1 and not stream.answered and self._unfinished() > self._budget:
            # Each stream is under the message limit, but together they are not: the stream
            # that goes past the connection's budget is reset (ENHANCE_YOUR_CALM).
            self._reset_stream(stream, ENHANCE_YOUR_CALM)
            return
        stream.recv_unacked += length
        if stream.recv_unacked >= self.limits.stream_window // 2:
            self._write(frame(WINDOW_UPDATE, 0, sid, stream.recv_unacked.to_bytes(4, "big")))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def _unfinished(self) -> int:
        """Bytes buffered for requests not yet complete (checked only on DATA that does not end
        its stream, so a large upload's frames, never a small call's)."""
        return sum(len(s.body) for s in self.streams.values() if s.open and not s.answered)

    def _request_complete(self, stream: Stream, too_large: bool = False) -> None:
        stream.open = False
        if stream.task is not None:  # its handler already started (too large): once is all
            return
        if stream.answered:
            self._forget(stream)
            return
        if too_large:
            stream.open = True  # the client is still sending; the answer resets the stream
            stream.body = bytearray()  # the application refuses it by its size
            stream.headers = [*stream.headers, (b":too-large", b"1")]  # (the list may be shared)
        self._app(self, stream)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self._last_id:  # idle: only HEADERS or PRIORITY may come (RFC 9113 5.1)
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            self._reset_stream(stream, FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.pending or stream.pending_end:
            self._send_pending(stream)

    def _on_reset(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "bad RST_STREAM")
        if sid == 0 or sid > self._last_id:
            raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self.streams.get(sid)
        if stream is None:
            return
        self._spend_reset()
        stream.reset = True
        stream.open = False
        self._blocked.pop(sid, None)
        if stream.task is not None and not stream.task.done() and not stream.answered:
            stream.task.cancel()  # it stays counted until it ends (``finished``)
        else:
            self._forget(stream)

    def _spend_reset(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        refill = (now - self._reset_at) * self.limits.reset_per_s
        self._resets = min(float(self.limits.reset_burst), self._resets + refill) - 1
        self._reset_at = now
        if self._resets < 0:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "too many streams reset or refused")

    def _reset_stream(self, stream: Stream, code: int) -> None:
        """Reset ``stream`` for the client's error: that costs the client's reset budget (else
        a stream error it provokes would be a free rapid reset), and a handler still running
        keeps the stream counted until it ends (``finished``)."""
        stream.reset = stream.answered = True
        stream.open = False
        self._write(frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self._blocked.pop(stream.id, None)
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        else:
            self._forget(stream)
        self._spend_reset()


def server_factory(
    application: Application, limits: Limits, registry: set[Connection]
) -> Callable[[], Any]:
    """A protocol factory for ``loop.create_server``."""
    return lambda: Connection(application, limits, registry)
