"""HTTP/2's wire for ``http2``: frame types, flags and error codes, frames, HPACK literals,
the limits of a connection, the state of one stream and a connection's HPACK decoder (RFC 9113,
RFC 7541)."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import cast

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

MAX_FRAME = 16384  # what this side accepts (the protocol's default; never raised)
MAX_WINDOW = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may ask of the server."""

    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 16384
    max_message_bytes: int = 64 * 1024 * 1024
    stream_window: int = 1 << 20
    connection_window: int = 16 << 20
    reset_burst: int = 200
    """Client resets allowed at once; the budget refills at ``reset_per_s``."""
    reset_per_s: float = 100.0
    unfinished_bodies_bytes: int = 0
    """Request bytes one connection may buffer on streams not yet ended (0: four messages of
    ``max_message_bytes``); the stream that goes past it is reset with ENHANCE_YOUR_CALM."""


class ConnectionError_(Exception):
    """The client broke the protocol: GOAWAY with ``code`` and close."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


_FRAME_HEAD = struct.Struct(">BHBBI")  # a 24-bit length, type, flags, stream id


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, ftype, flags, stream_id) + payload


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK's integer with ``prefix_bits`` bits in the first byte (whose high bits are
    ``first``)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, new name, no Huffman: stateless."""
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


STATUS_200 = b"\x88"  # :status 200, static table index 8


class Stream:
    """One request: its headers, its body, and the state of its answer."""

    __slots__ = (
        "answered",
        "body",
        "headers",
        "id",
        "open",
        "pending",
        "pending_end",
        "recv_unacked",
        "recv_window",
        "reset",
        "send_window",
        "sent",
        "task",
    )  # fmt: skip

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.open = True  # the client may still send (no END_STREAM yet)
        self.task: asyncio.Task[None] | None = None
        self.send_window = send_window
        self.pending = b""  # response DATA not all sent (windows, or a paused transport)
        self.sent = 0  # how much of ``pending`` was
        self.pending_end = b""  # the trailers frame, sent once ``pending`` is
        self.answered = False
        self.reset = False  # by the client: nothing more may be sent
        self.recv_window = recv_window
        self.recv_unacked = 0


def unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - payload[0]]


_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


def malformed(fields: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """Why ``fields`` are malformed (RFC 9113 8.2, 8.3.1) as a request's headers, and as its
    trailers (first and second; ``None``: well formed)."""
    regular = False
    seen: set[bytes] = set()
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                return "a pseudo-header after a regular field", "a pseudo-header in trailers"
            if name not in _PSEUDO or name in seen:
                why = f"pseudo-header {name!r} unknown or repeated"
                return why, why
            seen.add(name)
            continue
        regular = True
        if name.lower() != name or not name:
            why = f"field name {name!r} not in lowercase"
            return why, why
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            why = f"connection-specific field {name!r}"
            return why, why
    if not {b":method", b":scheme", b":path"} <= seen:
        request = "a request without :method, :scheme or :path"
    else:
        request = None
    return request, ("a pseudo-header in trailers" if seen else None)


Decoded = tuple[list[tuple[bytes, bytes]], str | None, str | None]
"""A header block's fields, and why they are malformed as a request's headers / as trailers."""


class HeaderDecoder:
    """One connection's HPACK decoder (``hpack``'s, whose dynamic table it keeps in step), with
    the blocks it decoded remembered. Raises ``ConnectionError_`` for a block too large or
    out of step with the table."""

    def __init__(self, max_header_list_bytes: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_bytes)
        self._decoded: dict[bytes, Decoded] = {}

    def decode(self, block: bytes) -> Decoded:
        """``block`` decoded (with why it is malformed as a request's headers and as trailers),
        remembered while the dynamic table stays as it is.

        A client sends the same block for the same call again and again (every field a
        reference to the tables, nothing added): decoding it costs more than the rest of the
        call, and gives the same fields as long as the dynamic table has not changed, which
        the leftmost entry (a new tuple on each insertion) and the table's size tell.
        """
        decoded = self._decoded.get(block)
        if decoded is not None:
            return decoded
        table = self._decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            fields = cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        except hpack.OversizedHeaderListError as exc:
            raise ConnectionError_(ENHANCE_YOUR_CALM, "header list larger than allowed") from exc
        except Exception as exc:  # hpack's HPACKError and its kin: the table is out of step
            raise ConnectionError_(COMPRESSION_ERROR, "bad HPACK block") from exc
        decoded = (fields, *malformed(fields))
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] != after[0] or before[1] is not after[1] or before[2] != after[2]:
            self._decoded.clear()
        else:
            if len(self._decoded) >= 32:  # blocks that vary (a header's value): start over
                self._decoded.clear()
            self._decoded[block] = decoded
        return decoded
