"""The front end's reply reader: frames come out whole however the bytes are cut, a broken
frame ends the stream once, and replies arrive through a real event loop and socket."""

from __future__ import annotations

import asyncio
import socket

import numpy as np

from modelyard.workers.messages import Error, Hello, Message, Outputs, Pong
from modelyard.workers.protocol import encode
from modelyard.workers.replies import ReplyProtocol

MESSAGES: list[Message] = [
    Hello(0, 123, "cpu", None),
    Outputs(1, {"y": np.arange(6, dtype=np.float32).reshape(2, 3)}, (1, 2, 3)),
    Pong(2),
    Outputs(3, {"s": np.array([b"ab", b""], dtype=object)}),
    Error(4, "NOT_FOUND", "no such model"),
    Outputs(5, {"big": np.arange(200_000, dtype=np.float64)}),  # 1.6 MB
]
STREAM = b"".join(bytes(p) for m in MESSAGES for p in encode(m))


def _collector() -> tuple[ReplyProtocol, list[Message], list[tuple[str, bool]]]:
    got: list[Message] = []
    ends: list[tuple[str, bool]] = []
    return ReplyProtocol(got.append, lambda r, m: ends.append((r, m))), got, ends


def _check(got: list[Message]) -> None:
    assert [type(m) for m in got] == [type(m) for m in MESSAGES]
    assert [m.request_id for m in got] == [0, 1, 2, 3, 4, 5]
    first, second, big = got[1], got[3], got[5]
    assert isinstance(first, Outputs)
    assert isinstance(second, Outputs)
    assert isinstance(big, Outputs)
    np.testing.assert_array_equal(first.tensors["y"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert list(first.compute_ns) == [1, 2, 3]
    assert second.tensors["s"].tolist() == [b"ab", b""]
    np.testing.assert_array_equal(big.tensors["big"], np.arange(200_000, dtype=np.float64))
    assert got[4] == MESSAGES[4]


def test_frames_come_out_whole_and_in_order_however_the_chunks_are_cut() -> None:
    small = STREAM[: -len(b"".join(bytes(p) for p in encode(MESSAGES[-1])))]
    # Every cut point of the small frames, then the whole stream in odd-sized pieces.
    for cut in range(1, len(small)):
        protocol, got, ends = _collector()
        protocol.data_received(small[:cut])
        protocol.data_received(small[cut:])
        assert [m.request_id for m in got] == [0, 1, 2, 3, 4], cut
        assert not ends
    for piece in (97, 4_093, 65_536, len(STREAM)):
        protocol, got, ends = _collector()
        for start in range(0, len(STREAM), piece):
            protocol.data_received(STREAM[start : start + piece])
        _check(got)
        assert not ends


def test_a_malformed_frame_ends_the_stream_once_and_nothing_after_it_is_read() -> None:
    protocol, got, ends = _collector()
    good = b"".join(bytes(p) for p in encode(Pong(1)))
    bad = b"\x05\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00not j"
    protocol.data_received(good + bad + good)
    protocol.data_received(good)
    protocol.connection_lost(None)
    assert [m.request_id for m in got] == [1]
    assert len(ends) == 1
    reason, malformed = ends[0]
    assert malformed
    assert "malformed frame" in reason


def test_replies_arrive_through_a_real_socket_and_the_end_is_told() -> None:
    async def scenario() -> tuple[list[Message], list[tuple[str, bool]]]:
        ours, theirs = socket.socketpair()
        protocol, got, ends = _collector()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: protocol, sock=ours)
        theirs.setblocking(False)  # sock_sendall's requirement
        with theirs:
            for start in range(0, len(STREAM), 50_000):
                await loop.sock_sendall(theirs, STREAM[start : start + 50_000])
        for _ in range(500):  # until the end of the stream has been read (bounded: 5 s)
            if ends:
                break
            await asyncio.sleep(0.01)
        transport.abort()
        return got, ends

    got, ends = asyncio.run(scenario())
    _check(got)
    assert ends == [("its connection closed", False)]
