"""Frames over a blocking socket: the worker's side of the pipe (the front end's is asyncio's,
``modelyard.workers.client`` and ``modelyard.workers.replies``). ``send_message`` and
``send_frame`` write one frame; ``recv_message`` and ``FrameReader`` read them.
"""

from __future__ import annotations

import select
import socket

from modelyard.workers import wire
from modelyard.workers.messages import Message, ProtocolError
from modelyard.workers.protocol import decode_body, encode, split_prefix
from modelyard.workers.wire import PREFIX_BYTES

# Assigned here, not imported by name: CPython compiles a method call on a name bound by
# ``import`` to an attribute load and a call (a bound method made on every call) where a name
# assigned in the module gets LOAD_METHOD; these methods run on every frame.
_PREFIX = wire.PREFIX


def send_message(sock: socket.socket, message: Message) -> None:
    """Write one frame with scatter/gather ``sendmsg`` (tensor buffers are not copied).

    Not thread-safe: callers that send from several threads hold one lock around it.
    """
    send_frame(sock, encode(message))


def send_frame(sock: socket.socket, frame: list[bytes | memoryview]) -> None:
    """Write the parts of one frame (``encode``'s, ``encode_outputs``'s), as ``send_message``."""
    sent = sock.sendmsg(frame)
    if sent == PREFIX_BYTES + _PREFIX.unpack_from(frame[0])[2]:  # all of it: the common case
        return
    parts = [memoryview(p).cast("B") for p in frame]
    while True:  # a large frame, in pieces as the socket takes them
        while parts and sent >= parts[0].nbytes:
            sent -= parts.pop(0).nbytes
        if not parts:
            return
        if sent:
            parts[0] = parts[0][sent:]
        sent = sock.sendmsg(parts)


def recv_message(sock: socket.socket) -> Message | None:
    """Read one frame; None at a clean end of stream (the peer closed or died)."""
    prefix = _recv_exactly(sock, PREFIX_BYTES)
    if prefix is None:
        return None
    header_len, n_buffers, body_len = split_prefix(prefix)
    body = _recv_exactly(sock, body_len) if body_len else bytearray()
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode_body(body, header_len, n_buffers)  # a bytearray: writable arrays


class FrameReader:
    """Reads frames from a blocking socket through a buffer: one ``recv`` usually brings a
    whole small frame (prefix and body), where ``recv_message`` makes a system call for each.
    A body larger than the buffer is read straight into its own bytearray. One thread at a
    time reads; the socket is read only through this.

    Each ``recv`` is preceded by a ``poll`` for input. A thread blocked in ``recv`` on a Unix
    socket sleeps on the socket's one wait queue, which is also woken whenever the peer
    consumes what this end sent (the kernel's "write space" wake-up): at one request in
    flight the worker's reader was woken for nothing after every reply, 1.8 sleeps per
    request instead of one. ``poll`` waits for input only, so the reader sleeps once per
    frame; the system call it adds costs far less than the wake-up it saves (issue 18).
    """

    def __init__(self, sock: socket.socket, buffer_bytes: int = 256 * 1024) -> None:
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are self._buf[self._start:self._end]
        self._end = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet (more frames, or the rest of one)."""
        return self._end - self._start

    def read(self) -> Message | None:
        """The next message; None at a clean end of stream (the peer closed or died)."""
        if self._end - self._start < PREFIX_BYTES and not self._fill(PREFIX_BYTES):
            return None
        # The prefix is read where it lies, and a small frame came whole with it, usually.
        header_len, n_buffers, body_len = split_prefix(self._buf, self._start)
        start = self._start + PREFIX_BYTES
        stop = start + body_len
        if stop <= self._end:
            self._start = stop
            body = self._buf[start:stop]  # a copy: the buffer is reused
        else:
            self._start = start
            body = self._take(body_len)
        return decode_body(body, header_len, n_buffers)  # writable arrays, as recv_message's

    def _take(self, n: int) -> bytearray:
        """The next ``n`` bytes of a frame (a copy); ProtocolError when the stream ends first."""
        have = self._end - self._start
        if have < n and n > len(self._buf):  # larger than the buffer: its own array, one copy
            out = bytearray(n)
            out[:have] = self._view[self._start : self._end]
            self._start = self._end = 0
            view = memoryview(out)
            while have < n:
                self._poller.poll()
                k = self._sock.recv_into(view[have:])
                if k == 0:
                    raise ProtocolError("stream ended inside a frame")
                have += k
            return out
        if have < n and not self._fill(n):
            raise ProtocolError("stream ended inside a frame")
        start = self._start
        self._start = start + n
        return self._buf[start : start + n]

    def _fill(self, n: int) -> bool:
        """Receive until at least ``n`` bytes (no more than the buffer holds) are unread; False
        at an end of stream with nothing unread (between frames), ProtocolError at one inside
        a frame."""
        have = self._end - self._start
        if self._start:  # move the unread tail to the front to make room
            self._buf[:have] = self._view[self._start : self._end]
            self._start, self._end = 0, have
        while self._end < n:
            self._poller.poll()  # input only: see the class docstring
            k = self._sock.recv_into(self._view[self._end :])
            if k == 0:
                if self._end == 0:
                    return False
                raise ProtocolError("stream ended inside a frame")
            self._end += k
        return True


def _recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0:
                return None
            raise ProtocolError("stream ended inside a frame")
        got += k
    return buf
