"""An answer's writes during one turn of the event loop leave as one: nothing is sent before
the turn ends, then every byte in order; ``close`` sends what is held, ``abort`` drops it.

A real event loop and a real socket pair; the peer reads without blocking."""

from __future__ import annotations

import asyncio
import socket

import pytest

from modelyard.server.http.transport import CoalescingTransport, http_protocol


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    return transport, theirs


def _available(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except BlockingIOError:
        return b""


async def _turns(sock: socket.socket, want: int) -> bytes:
    got = b""
    for _ in range(100):  # bounded: 100 turns of the loop
        await asyncio.sleep(0)
        got += _available(sock)
        if len(got) >= want:
            break
    return got


def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    async def main() -> None:
        transport, peer = await _pair()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        coalescing.write(b"hello")
        assert _available(peer) == b""  # held until the turn ends
        assert coalescing.get_write_buffer_size() == 43
        got = await _turns(peer, 43)
        assert got == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        coalescing.writelines([b"a", b"b"])
        coalescing.close()  # sends what is held first
        assert await _turns(peer, 2) == b"ab"
        assert coalescing.is_closing()
        peer.close()

    asyncio.run(main())


def test_abort_drops_what_is_held() -> None:
    async def main() -> None:
        transport, peer = await _pair()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"never")
        coalescing.abort()
        for _ in range(5):
            await asyncio.sleep(0)
        assert _available(peer) == b""
        peer.close()

    asyncio.run(main())


def test_uvicorn_gets_the_coalescing_protocol_where_httptools_exists() -> None:
    pytest.importorskip("httptools")
    protocol = http_protocol()
    assert not isinstance(protocol, str)
    assert protocol.__name__ == "CoalescingHttpToolsProtocol"


def test_write_now_sends_what_is_held_and_its_data_at_once_in_order() -> None:
    async def main() -> None:
        transport, peer = await _pair()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"held ")
        coalescing.write_now(b"now")
        assert coalescing.get_write_buffer_size() == 0  # nothing left for the turn's end
        assert await _turns(peer, 8) == b"held now"
        coalescing.close()
        peer.close()

    asyncio.run(main())
