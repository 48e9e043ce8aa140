"""Raw load-generating connections for ``bench/interleaved.py``: closed-loop and callback-driven.

The next request is written from the callback that read the last answer (no task per
request); request bytes are prepared once; answers are read, not decoded. ``H1``: one HTTP/1.1
keep-alive connection, one request at a time (the status and Content-Length are read). ``H2``:
one HTTP/2 connection carrying gRPC calls on many streams, with a fixed header block (HPACK
literals, no dynamic table) and a frame-level reader (a call succeeded when its stream carried
a message before END_STREAM). ``Run`` is what one block or window counts.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from protocols import GRPC_METHOD

# -- one measurement over any connection -----------------------------------------------------


@dataclass
class Run:
    """One block or window: which answers count, and what was seen. ``remaining`` bounds a
    block by requests; ``stop_ns`` bounds a window by time (no new request after it)."""

    count_from_ns: int
    stop_ns: int
    remaining: int
    latencies: list[int] | None
    done: asyncio.Future[None]
    counted: int = 0
    completed: int = 0
    errors: int = 0
    outstanding: int = 0
    error_sample: bytes = b""  # the raw end of one failed answer, to say what failed

    def answered(self, ok: bool, started_ns: int) -> bool:
        """Note one answer; True when the connection should send the next request."""
        now = time.perf_counter_ns()
        self.outstanding -= 1
        self.completed += 1
        if not ok:
            self.errors += 1
        if self.count_from_ns <= now < self.stop_ns:
            self.counted += 1
            if self.latencies is not None:
                self.latencies.append(now - started_ns)
        more = self.remaining > 0 and now < self.stop_ns
        if more:
            self.remaining -= 1
            self.outstanding += 1
        elif self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)
        return more

    def failed(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class H1(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request at a time."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: Any = None
        self.run: Run | None = None
        self._buffer = bytearray()
        self._end = -1
        self._status = 0
        self._started = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self) -> None:
        self._started = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._end < 0:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self._buffer[:head_end]).lower()
            self._status = int(head[9:12])
            start = head.find(b"\r\ncontent-length:") + 17
            stop = head.find(b"\r\n", start)
            self._end = head_end + 4 + int(head[start : stop if stop >= 0 else len(head)])
        if len(self._buffer) >= self._end:
            del self._buffer[: self._end]
            self._end = -1
            if self._status != 200 and self.run is not None and not self.run.error_sample:
                self.run.error_sample = bytes(self._buffer[:200])
            if self.run is not None and self.run.answered(self._status == 200, self._started):
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run is not None:
            self.run.failed(ConnectionError(f"HTTP/1.1 connection lost: {exc}"))


def _literal(name_index: int, value: bytes) -> bytes:
    """An HPACK literal without indexing, its name from the static table (4-bit prefix)."""
    head = bytes([name_index]) if name_index < 15 else bytes([15, name_index - 15])
    assert len(value) < 127
    return head + bytes([len(value)]) + value


def _frame(kind: int, flags: int, stream: int, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + body
    )


_WINDOW = (1 << 31) - 1


class H2(asyncio.Protocol):
    """One HTTP/2 connection carrying gRPC calls, many streams at once. The header block is
    the same bytes for every call (no dynamic table), the message is framed once; what comes
    back is read at the frame level only. Our receive windows are opened to 2^31 - 1 at once
    (a run moves far less); the server's are respected (the connection window)."""

    def __init__(self, port: int, message: bytes) -> None:
        block = (
            b"\x83\x86"  # :method POST, :scheme http (static table)
            + _literal(4, GRPC_METHOD.encode())
            + _literal(1, f"127.0.0.1:{port}".encode())
            + _literal(31, b"application/grpc")
            + b"\x00\x02te\x08trailers"
        )
        self._block = block
        self._data = b"\x00" + struct.pack(">I", len(message)) + message
        self.transport: Any = None
        self.run: Run | None = None
        self._buffer = bytearray()
        self._next_stream = 1
        self._streams: dict[int, list[int]] = {}  # stream -> [started_ns, got a message]
        self._send_window = 65535
        self._waiting = 0  # requests held back for the server's window
        self._out: list[bytes] = []
        self._in_receive = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(">HI", 2, 0) + struct.pack(">HI", 4, _WINDOW)  # no push; window
        transport.write(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(4, 0, 0, settings)
            + _frame(8, 0, 0, struct.pack(">I", _WINDOW - 65535))
        )

    def send(self) -> None:
        if self._send_window < len(self._data):
            self._waiting += 1
            return
        self._send_window -= len(self._data)
        stream = self._next_stream
        self._next_stream += 2
        self._streams[stream] = [time.perf_counter_ns(), 0]
        out = _frame(1, 4, stream, self._block) + _frame(0, 1, stream, self._data)
        if self._in_receive:
            self._out.append(out)
        else:
            self.transport.write(out)

    def _ended(self, stream: int) -> None:
        state = self._streams.pop(stream, None)
        if state is not None and self.run is not None and self.run.answered(state[1], state[0]):
            self.send()

    def data_received(self, data: bytes) -> None:
        self._in_receive = True
        buffer = self._buffer
        buffer += data
        at = 0
        size = len(buffer)
        while size - at >= 9:
            length = int.from_bytes(buffer[at : at + 3], "big")
            if size - at < 9 + length:
                break
            kind, flags = buffer[at + 3], buffer[at + 4]
            stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            body = at + 9
            at = body + length
            if kind == 0:  # DATA
                state = self._streams.get(stream)
                if state is not None and length > 0:
                    state[1] = 1
                if flags & 1:
                    self._ended(stream)
            elif kind == 1:  # HEADERS (answer headers, or trailers with END_STREAM)
                if flags & 1 and self.run is not None and not self.run.error_sample:
                    state = self._streams.get(stream)
                    if state is not None and not state[1]:
                        self.run.error_sample = bytes(buffer[body:at])
                if flags & 1:
                    self._ended(stream)
            elif kind == 3:  # RST_STREAM
                if self.run is not None and not self.run.error_sample:
                    self.run.error_sample = b"RST_STREAM " + bytes(buffer[body:at])
                state = self._streams.get(stream)
                if state is not None:
                    state[1] = 0
                self._ended(stream)
            elif kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                self._out.append(_frame(4, 1, 0, b""))
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == 6 and not flags & 1:  # PING: answer
                self._out.append(_frame(6, 1, 0, bytes(buffer[body:at])))
            elif kind == 7:  # GOAWAY
                if self.run is not None:
                    self.run.failed(ConnectionError("the server sent GOAWAY"))
            elif kind == 8 and stream == 0:  # WINDOW_UPDATE of the connection
                self._send_window += int.from_bytes(buffer[body:at], "big") & 0x7FFFFFFF
                while self._waiting and self._send_window >= len(self._data):
                    self._waiting -= 1
                    self.send()
        del buffer[:at]
        self._in_receive = False
        if self._out:
            self.transport.write(b"".join(self._out))
            self._out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run is not None:
            self.run.failed(ConnectionError(f"HTTP/2 connection lost: {exc}"))
