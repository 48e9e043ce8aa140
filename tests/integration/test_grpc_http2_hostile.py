"""The gRPC port's own HTTP/2 server against clients that break the protocol or its limits.

Each test speaks raw HTTP/2 over a socket (frames built here, headers HPACK-encoded by the
``hpack`` package) to a real server on 127.0.0.1, and checks what a user of the port would
notice: the bad connection is refused or closed with the right GOAWAY, and a real gRPC client on
another connection is answered throughout. Large tensors in and out go through tritonclient
against the shared server (flow control both ways, past the 64 KiB default windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import grpc
import hpack
import httpx
import numpy as np
import pytest

from modelyard.lifecycle.registry import ModelRegistry
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.fast import FastServer
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.h2wire import Stream, literal
from modelyard.server.grpc.http2 import Connection, server_factory
from modelyard.server.grpc.kserve import KServeServicer
from modelyard.server.grpc.server import start_grpc_server
from modelyard.testing.models import BuiltModel
from modelyard.testing.server import RunningServer

grpcclient = pytest.importorskip("tritonclient.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIVE = "/inference.GRPCInferenceService/ServerLive"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9
)  # fmt: skip
ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, REFUSED_STREAM = 0xB, 0x3, 0x7
MESSAGE_LIMIT = 4 << 20


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


class Raw:
    """One raw HTTP/2 connection: frames out, frames in, nothing checked on its side."""

    def __init__(self, port: int, preface: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self._buf = b""
        if preface:
            self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))

    def headers(self, sid: int, path: str = LIVE, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        fields = [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra,
        ]  # fmt: skip
        return self.encoder.encode(fields)

    def request(self, sid: int, message: bytes = b"") -> bytes:
        """HEADERS + one DATA frame ending the stream: a whole unary call's bytes."""
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        return _frame(HEADERS, 0x4, sid, self.headers(sid)) + _frame(DATA, 0x1, sid, body)

    def frames(
        self, until: Any, timeout: float = 10.0, settle: bool = False
    ) -> list[tuple[int, int, int, bytes]]:
        """Frames read until ``until(frame)`` is true or the connection closes (``settle``:
        or ``timeout`` passes; else that is a failure)."""
        got: list[tuple[int, int, int, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self._buf) >= 9:
                length = int.from_bytes(self._buf[:3], "big")
                if len(self._buf) < 9 + length:
                    break
                f = (
                    self._buf[3],
                    self._buf[4],
                    int.from_bytes(self._buf[5:9], "big") & 0x7FFFFFFF,
                    self._buf[9 : 9 + length],
                )
                self._buf = self._buf[9 + length :]
                got.append(f)
                if until(f):
                    return got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                got.append((-1, 0, 0, b""))  # closed
                return got
            self._buf += data
        if settle:
            return got
        raise AssertionError(f"nothing expected arrived in {timeout} s: {got[-5:]}")

    def ping_acks(self, tail: bytes, wanted: int, timeout: float) -> int:
        """Sends ``tail`` (the socket non-blocking) and reads until ``wanted`` PING ACKs have
        come; fails on a GOAWAY or a close. Frames are counted in place, not kept (``frames``
        keeps each one: too slow for half a million)."""
        buf, acks, deadline = bytearray(), 0, time.monotonic() + timeout
        while acks < wanted and time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], 0.2)
            if tail:
                with contextlib.suppress(BlockingIOError):
                    tail = tail[self.sock.send(tail) :]
            if not readable:
                continue
            data = self.sock.recv(1 << 20)
            assert data, f"the connection closed after {acks} of {wanted} PING answers"
            buf += data
            at = 0
            while len(buf) - at >= 9:
                end = at + 9 + int.from_bytes(buf[at : at + 3], "big")
                if end > len(buf):
                    break
                ftype, flags = buf[at + 3], buf[at + 4]
                assert ftype != GOAWAY, f"GOAWAY {bytes(buf[at + 9 : end])!r} after {acks} acks"
                acks += ftype == PING and flags & 0x1
                at = end
            del buf[:at]
        return acks

    def close(self) -> None:
        self.sock.close()


def _decoded(block: bytes) -> list[tuple[str, str]]:
    """A header block of the server's (literals only, so no table is needed in between)."""
    return [(str(k), str(v)) for k, v in hpack.Decoder().decode(block)]


def _stream_1_reset_and_the_connection_goes_on(raw: Raw, code: int) -> None:
    """Stream 1 ends in RST_STREAM with ``code``; a call on stream 3 of the same connection is
    then answered OK. Closes ``raw``."""
    frames = raw.frames(lambda f: f[2] == 1 and (f[0] == RST_STREAM or f[1] & 0x1))
    assert frames[-1][0] == RST_STREAM, frames[-3:]
    assert int.from_bytes(frames[-1][3], "big") == code
    raw.sock.sendall(raw.request(3))
    frames = raw.frames(lambda f: f[0] == HEADERS and f[2] == 3 and f[1] & 0x1)
    assert ("grpc-status", "0") in _decoded(frames[-1][3])
    raw.close()


def _goaway(f: tuple[int, int, int, bytes]) -> bool:
    return f[0] in (GOAWAY, -1)


def _goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    codes = [int.from_bytes(f[3][4:8], "big") for f in frames if f[0] == GOAWAY]
    return codes[0] if codes else None


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A gRPC port (modelyard's HTTP/2 server) with no models: the protocol is what is tested.
    On uvloop, as ``modelyard serve`` runs it."""
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    plane = DataPlane(ModelRegistry())
    started = asyncio.run_coroutine_threadsafe(
        start_grpc_server(plane, "127.0.0.1", 0, max_message_bytes=MESSAGE_LIMIT), loop
    ).result(30)
    yield started.port
    asyncio.run_coroutine_threadsafe(started.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _live(port: int) -> bool:
    """A real gRPC client's call on its own connection (the one a bad client must not disturb)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            LIVE,
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        return bool(call(pb.ServerLiveRequest(), timeout=10).live)


def test_a_raw_call_is_answered_with_grpc_trailers(port: int) -> None:
    raw = Raw(port)
    raw.sock.sendall(raw.request(1))
    frames = raw.frames(lambda f: f[0] == HEADERS and f[1] & 0x1)
    raw.close()
    data = b"".join(f[3] for f in frames if f[0] == DATA and f[2] == 1)
    assert pb.ServerLiveResponse.FromString(data[5:]).live
    trailers = _decoded(frames[-1][3])
    assert ("grpc-status", "0") in trailers


def test_garbage_instead_of_the_preface_closes_that_connection_only(port: int) -> None:
    raw = Raw(port, preface=False)
    raw.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.frames(_goaway)[-1][0] in (GOAWAY, -1)
    assert raw.frames(lambda f: f[0] == -1)[-1][0] == -1  # then closed
    raw.close()
    assert _live(port)


def test_streams_beyond_the_limit_are_refused_and_the_open_ones_still_answered(port: int) -> None:
    raw = Raw(port)
    opened = [1 + 2 * i for i in range(100)]  # the advertised limit; no stream ends yet
    raw.sock.sendall(b"".join(_frame(HEADERS, 0x4, sid, raw.headers(sid)) for sid in opened))
    raw.sock.sendall(_frame(HEADERS, 0x4, 201, raw.headers(201)))
    frames = raw.frames(lambda f: f[0] == RST_STREAM)
    assert frames[-1][2] == 201
    assert int.from_bytes(frames[-1][3], "big") == REFUSED_STREAM
    raw.sock.sendall(_frame(DATA, 0x1, 1, b"\x00" * 5))  # the first one ends: answered
    frames = raw.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & 0x1)
    assert ("grpc-status", "0") in _decoded(frames[-1][3])  # stateless literals
    raw.close()
    assert _live(port)


def test_a_header_list_over_the_limit_closes_the_connection(port: int) -> None:
    raw = Raw(port)
    block = raw.headers(1, extra=(("x-big", "a" * 20000),))
    first, rest = block[:16000], block[16000:]
    raw.sock.sendall(_frame(HEADERS, 0, 1, first) + _frame(CONTINUATION, 0x4, 1, rest))
    frames = raw.frames(_goaway)
    assert _goaway_code(frames) in (ENHANCE_YOUR_CALM, None)  # GOAWAY, or closed at once
    raw.close()
    assert _live(port)


def test_continuation_without_end_is_cut(port: int) -> None:
    raw = Raw(port)
    raw.sock.sendall(_frame(HEADERS, 0, 1, raw.headers(1)))
    sent = 0
    try:
        for _ in range(10_000):  # 40 MB if nothing stopped it
            raw.sock.sendall(_frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b" * 800))
            sent += 1
            if sent > 200:
                time.sleep(0.001)
    except OSError:
        pass  # the server closed the connection: sending fails
    assert sent < 10_000
    raw.close()
    assert _live(port)


def test_rapid_reset_is_stopped_with_enhance_your_calm(port: int) -> None:
    """CVE-2023-44487: open and reset streams as fast as possible."""
    _calls_ended_at_once_get_enhance_your_calm(
        port, lambda sid: _frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big"))
    )


def _calls_ended_at_once_get_enhance_your_calm(port: int, end: Any) -> None:
    """2,000 calls, each followed at once by ``end(stream id)``'s frame: the connection gets a
    GOAWAY with ENHANCE_YOUR_CALM, and a client on another connection is still answered."""
    raw = Raw(port)
    burst = b"".join(raw.request(sid) + end(sid) for sid in range(1, 4001, 2))
    with contextlib.suppress(OSError):  # closed before all of it was sent
        raw.sock.sendall(burst)
    frames = raw.frames(_goaway, timeout=30)
    assert _goaway_code(frames) == ENHANCE_YOUR_CALM
    raw.close()
    assert _live(port)


def test_answers_stay_within_the_clients_windows(
    server: RunningServer, models: dict[str, dict[int, BuiltModel]]
) -> None:
    """A 100 KiB answer to a client that grants the default 64 KiB: the server sends what the
    window allows, waits, and sends the rest once the client grants more."""
    x = np.random.default_rng(1).standard_normal((12800, 4)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="linear", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    raw = Raw(int(server.grpc_target.rsplit(":", 1)[1]))
    message = request.SerializeToString()
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    infer = "/inference.GRPCInferenceService/ModelInfer"
    raw.sock.sendall(_frame(HEADERS, 0x4, 1, raw.headers(1, path=infer)))
    for at in range(0, len(body), 16384):  # the server's windows are larger than this body
        end = 0x1 if at + 16384 >= len(body) else 0
        raw.sock.sendall(_frame(DATA, end, 1, body[at : at + 16384]))
    first = raw.frames(lambda f: False, timeout=3, settle=True)
    got = sum(len(f[3]) for f in first if f[0] == DATA)
    assert 0 < got <= 65535  # what the default window allows, and no more
    assert not any(f[0] == HEADERS and f[1] & 0x1 for f in first)
    raw.sock.sendall(
        _frame(WINDOW_UPDATE, 0, 0, (1 << 20).to_bytes(4, "big"))
        + _frame(WINDOW_UPDATE, 0, 1, (1 << 20).to_bytes(4, "big"))
    )
    rest = raw.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & 0x1)
    raw.close()
    assert ("grpc-status", "0") in _decoded(rest[-1][3])
    assert got + sum(len(f[3]) for f in rest if f[0] == DATA) > 100_000


def test_a_client_that_floods_pings_and_never_reads_is_not_read_either(port: int) -> None:
    """PING answers queue up only until the client's socket is full; then the server stops
    reading that client instead of buffering answers without bound. It pauses, it does not
    give up: once the client reads, every PING is answered on the same connection."""
    raw = Raw(port)  # its receive buffer stays at the kernel's first size: it never reads
    raw.sock.setblocking(False)
    pings = _frame(PING, 0, 0, b"12345678") * 4096  # 68 KiB per send
    rest = memoryview(pings)
    sent, stalled_since, paused, deadline = 0, None, False, time.monotonic() + 30
    while sent < 64 << 20 and time.monotonic() < deadline:
        try:
            n = raw.sock.send(rest)
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 2.0:
                paused = True  # the server has not read this connection for 2 s
                break
            time.sleep(0.02)
            continue
        stalled_since = None
        sent += n
        rest = rest[n:] or memoryview(pings)  # a partial send goes on mid-frame, not anew
    assert sent < 64 << 20, "the server kept reading a client that does not read its answers"
    assert paused, f"the server neither paused nor read 64 MiB in 30 s ({sent} bytes)"
    assert _live(port)  # while that client still holds its connection
    # The client reads again: the server resumes and answers each PING it was sent (the
    # last one's missing bytes go out as the answers come in).
    tail = bytes(rest[: rest.nbytes % 17])
    wanted = (sent + len(tail)) // 17
    assert raw.ping_acks(tail, wanted, timeout=30) == wanted
    raw.close()
    assert _live(port)


def test_settings_flood_is_answered_and_others_unaffected(port: int) -> None:
    raw = Raw(port)
    raw.sock.sendall(
        _frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + (65535).to_bytes(4, "big")) * 5000
    )
    raw.sock.sendall(raw.request(1))
    frames = raw.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & 0x1, timeout=30)
    assert sum(1 for f in frames if f[0] == SETTINGS and f[1] & 0x1) >= 5000
    raw.close()
    assert _live(port)


def test_gzip_requests_are_decoded(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}", compression=grpc.Compression.Gzip) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerMetadata",
            request_serializer=pb.ServerMetadataRequest.SerializeToString,
            response_deserializer=pb.ServerMetadataResponse.FromString,
        )
        assert call(pb.ServerMetadataRequest(), timeout=10).name


def test_unknown_method_is_unimplemented(port: int) -> None:
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        channel.unary_unary("/no.Such/Method")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tensors_larger_than_the_default_windows_both_ways(
    server: RunningServer, models: dict[str, dict[int, BuiltModel]]
) -> None:
    """200 KiB in, 100 KiB out: both past HTTP/2's 64 KiB default windows; plain and with
    tritonclient's request compression."""
    built = models["linear"][2]
    x = np.random.default_rng(0).standard_normal((12800, 4)).astype(np.float32)
    client = grpcclient.InferenceServerClient(url=server.grpc_target)
    try:
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32").set_data_from_numpy(x)
        for compression in (None, "gzip", "deflate"):  # tritonclient's option, decoded
            result = client.infer("linear", [tensor], compression_algorithm=compression)
            np.testing.assert_allclose(
                result.as_numpy("y"), built.reference({"x": x})["y"], rtol=1e-5
            )
    finally:
        client.close()


def test_64_calls_at_once_from_one_channel_are_all_answered(port: int) -> None:
    """A client keeping 64 calls in flight: answered streams stop counting against the stream
    limit as soon as they are answered, so none is refused while fewer than 100 are open."""

    async def load() -> list[str]:
        failures: list[str] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                LIVE,
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString,
            )

            async def client() -> None:
                for _ in range(60):
                    try:
                        await call(pb.ServerLiveRequest(), timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        failures.append(f"{exc.code()}: {exc.details()}")

            await asyncio.gather(*(client() for _ in range(64)))
        return failures

    assert asyncio.run(load()) == []


PROTOCOL_ERROR = 0x1


def test_enable_push_other_than_0_or_1_is_a_protocol_error(port: int) -> None:
    """RFC 9113 6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1 is a connection error."""
    raw = Raw(port)
    raw.sock.sendall(_frame(SETTINGS, 0, 0, (0x2).to_bytes(2, "big") + (2).to_bytes(4, "big")))
    frames = raw.frames(_goaway)
    assert _goaway_code(frames) == PROTOCOL_ERROR
    raw.close()
    assert _live(port)


def test_initial_window_raise_that_overflows_an_open_stream_is_a_flow_control_error(
    port: int,
) -> None:
    """RFC 9113 6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE change that takes an open stream's window
    past 2^31-1 is a connection error of type FLOW_CONTROL_ERROR."""
    raw = Raw(port)
    raw.sock.sendall(
        _frame(HEADERS, 0x4, 1, raw.headers(1))  # open, not ended: the server waits for DATA
        + _frame(WINDOW_UPDATE, 0, 1, ((1 << 31) - 1 - 65535).to_bytes(4, "big"))  # at the max
        + _frame(SETTINGS, 0, 0, (0x4).to_bytes(2, "big") + (65536).to_bytes(4, "big"))
    )
    frames = raw.frames(_goaway)
    assert _goaway_code(frames) == FLOW_CONTROL_ERROR
    raw.close()
    assert _live(port)


def test_unfinished_bodies_on_many_streams_are_bounded_per_connection(port: int) -> None:
    """Each stream stays under the message limit, but together they would buffer 8 x 3 MiB
    before any ends: the server refuses to hold more than a few messages' worth per connection
    (a stream is reset with ENHANCE_YOUR_CALM) instead of buffering 100 x the message limit."""
    raw = Raw(port)
    sids = [1 + 2 * i for i in range(8)]
    raw.sock.sendall(b"".join(_frame(HEADERS, 0x4, sid, raw.headers(sid)) for sid in sids))
    chunk = b"\x00" * 16384
    body = b"\x00" + (3 << 20).to_bytes(4, "big")
    with contextlib.suppress(OSError):  # closed before all of it was sent
        raw.sock.sendall(b"".join(_frame(DATA, 0, sid, body) for sid in sids))
        for _ in range((3 << 20) // len(chunk)):  # round robin, as a multiplexing client does
            raw.sock.sendall(b"".join(_frame(DATA, 0, sid, chunk) for sid in sids))
    frames = raw.frames(lambda f: f[0] in (RST_STREAM, GOAWAY, -1), timeout=20)
    assert frames[-1][0] == RST_STREAM
    assert int.from_bytes(frames[-1][3], "big") == ENHANCE_YOUR_CALM
    raw.close()
    assert _live(port)


@pytest.mark.parametrize(
    "fields",
    [
        [(":method", "POST"), (":scheme", "http"), (":authority", "x")],  # no :path
        [(":method", "POST"), (":scheme", "http"), (":path", LIVE), ("X-Upper", "1")],
        [(":method", "POST"), (":scheme", "http"), (":path", LIVE), ("connection", "close")],
        [(":method", "POST"), (":scheme", "http"), (":path", LIVE), ("te", "gzip")],
        [(":method", "POST"), ("x-a", "1"), (":scheme", "http"), (":path", LIVE)],
    ],
    ids=["no-path", "uppercase", "connection", "te-not-trailers", "pseudo-after-regular"],
)
def test_malformed_request_headers_reset_the_stream_only(
    port: int, fields: list[tuple[str, str]]
) -> None:
    """RFC 9113 8.1.1/8.2/8.3: a malformed request is a stream error of type PROTOCOL_ERROR;
    the connection goes on (the next call on it is answered)."""
    raw = Raw(port)
    block = raw.encoder.encode([*fields, ("content-type", "application/grpc")])
    raw.sock.sendall(_frame(HEADERS, 0x4, 1, block) + _frame(DATA, 0x1, 1, b"\x00" * 5))
    _stream_1_reset_and_the_connection_goes_on(raw, PROTOCOL_ERROR)


STREAM_CLOSED = 0x5


def test_window_update_on_an_idle_stream_is_a_protocol_error(port: int) -> None:
    """RFC 9113 5.1: an idle stream may receive only HEADERS or PRIORITY."""
    raw = Raw(port)
    raw.sock.sendall(_frame(WINDOW_UPDATE, 0, 9, (1).to_bytes(4, "big")))
    assert _goaway_code(raw.frames(_goaway)) == PROTOCOL_ERROR
    raw.close()


def test_data_after_end_stream_resets_the_stream_with_stream_closed(port: int) -> None:
    """RFC 9113 5.1: DATA on a half-closed (remote) stream is a stream error STREAM_CLOSED (the
    extra bytes are not silently dropped while the call runs on); the connection goes on."""
    raw = Raw(port)
    raw.sock.sendall(raw.request(1) + _frame(DATA, 0x1, 1, b"\x00" * 5))
    _stream_1_reset_and_the_connection_goes_on(raw, STREAM_CLOSED)


def test_a_second_headers_without_end_stream_resets_the_stream_with_protocol_error(
    port: int,
) -> None:
    """RFC 9113 8.1: a HEADERS after the request's, without END_STREAM, makes the request
    malformed: a stream error PROTOCOL_ERROR; the connection (and its HPACK state) goes on."""
    raw = Raw(port)
    raw.sock.sendall(
        _frame(HEADERS, 0x4, 1, raw.headers(1))
        + _frame(HEADERS, 0x4, 1, raw.encoder.encode([("x-more", "headers")]))
    )
    _stream_1_reset_and_the_connection_goes_on(raw, PROTOCOL_ERROR)


def test_padding_that_leaves_no_room_for_the_priority_fields_is_a_protocol_error(
    port: int,
) -> None:
    """RFC 9113 6.2: padding beyond what the HEADERS frame's other fields leave is a connection
    error PROTOCOL_ERROR."""
    raw = Raw(port)
    payload = bytes((5,)) + b"\x00" * 5  # PADDED | PRIORITY: pad 5 of 6 bytes, priority needs 5
    raw.sock.sendall(_frame(HEADERS, 0x4 | 0x8 | 0x20, 1, payload))
    assert _goaway_code(raw.frames(_goaway)) == PROTOCOL_ERROR
    raw.close()


def test_a_remembered_header_block_follows_the_dynamic_table(port: int) -> None:
    """The same block bytes, sent again after the dynamic table changed, mean the new entry
    (RFC 7541 2.3.3): index 62 is first a good field, then an uppercase (malformed) one."""
    raw = Raw(port)
    base = b"\x83\x86" + b"".join(  # :method POST, :scheme http; the rest not indexed
        literal(name, value)
        for name, value in (
            (b":path", LIVE.encode()), (b":authority", b"x"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        )
    )  # fmt: skip
    good = base + b"\x40\x05x-abc\x011"  # literal with incremental indexing: entry 62
    again = base + b"\xbe"  # indexed field 62
    bad = base + b"\x40\x05X-ABC\x012"  # indexed too: now entry 62 (malformed, upper case)

    def call(sid: int, block: bytes) -> int:
        data = b"\x00" * 5
        raw.sock.sendall(_frame(HEADERS, 0x4, sid, block) + _frame(DATA, 0x1, sid, data))
        got = raw.frames(lambda f: f[2] == sid and (f[0] == RST_STREAM or f[1] & 0x1))
        return got[-1][0]

    assert call(1, good) == HEADERS
    assert call(3, again) == HEADERS  # (remembered now: the table did not change)
    assert call(5, again) == HEADERS
    assert call(7, bad) == RST_STREAM
    assert call(9, again) == RST_STREAM  # the same bytes, the new entry 62
    raw.close()


def test_resets_the_client_provokes_count_like_its_own(port: int) -> None:
    """Rapid reset by proxy: each call ended at once by a WINDOW_UPDATE of 0 on its stream
    (which the server answers with RST_STREAM) spends the same reset budget as RST_STREAM."""
    zero = (0).to_bytes(4, "big")
    _calls_ended_at_once_get_enhance_your_calm(
        port, lambda sid: _frame(WINDOW_UPDATE, 0, sid, zero)
    )


@pytest.mark.parametrize(
    ("body", "extra", "status"),
    [
        (b"\x00" + (100).to_bytes(4, "big") + b"\x00" * 10, (), "3"),  # says more than came
        (b"\x01" + (2).to_bytes(4, "big") + b"\x08\x01", (), "13"),  # compressed, no encoding
        (b"\x00" + (MESSAGE_LIMIT + 1).to_bytes(4, "big") + b"\x00" * 10, (), "8"),  # over max
        (b"\x01" + (2).to_bytes(4, "big") + b"\x08\x01", (("grpc-encoding", "br"),), "12"),
    ],
    ids=["short", "compressed-no-encoding", "over-max", "unknown-encoding"],
)
def test_bad_grpc_messages_get_a_status_naming_the_problem(
    port: int, body: bytes, extra: tuple[tuple[str, str], ...], status: str
) -> None:
    raw = Raw(port)
    raw.sock.sendall(
        _frame(HEADERS, 0x4, 1, raw.headers(1, extra=extra)) + _frame(DATA, 1, 1, body)
    )
    frames = raw.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & 0x1)
    trailers = dict(_decoded(frames[-1][3]))
    assert trailers["grpc-status"] == status, trailers
    assert trailers.get("grpc-message")
    raw.close()


def test_a_message_past_the_limit_is_refused_before_it_all_arrives(port: int) -> None:
    """A body that grows past the message limit (without END_STREAM): RESOURCE_EXHAUSTED, and
    the stream is reset so the client stops sending."""
    raw = Raw(port)
    raw.sock.sendall(_frame(HEADERS, 0x4, 1, raw.headers(1)))
    chunk = b"\x00" * 16384
    prefix = _frame(DATA, 0, 1, b"\x00" + (MESSAGE_LIMIT + 65536).to_bytes(4, "big"))
    with contextlib.suppress(OSError):
        raw.sock.sendall(prefix + b"".join(_frame(DATA, 0, 1, chunk) for _ in range(260)))
    frames = raw.frames(lambda f: f[0] == RST_STREAM and f[2] == 1, timeout=20)
    trailers = [dict(_decoded(f[3])) for f in frames if f[0] == HEADERS and f[2] == 1]
    assert trailers[-1]["grpc-status"] == "8"
    raw.close()
    assert _live(port)


@pytest.mark.parametrize("end", ["DATA", "trailers"])
def test_a_body_past_a_small_limit_runs_its_handler_once(end: str) -> None:
    """A message limit far below the stream window: the body passes the limit, and the client
    keeps sending (more frames past the limit, then END_STREAM) before it sees the answer. The
    stream is refused once (one RESOURCE_EXHAUSTED answer) and its handler starts once, not once
    per frame that comes after the limit, nor again at the stream's end (DATA or trailers; each
    start would be a handler the stream limit does
    not count). The server is modelyard's gRPC application on the HTTP/2 layer, as
    ``start_grpc_server`` builds it, with the calls into the application counted."""
    uvloop = pytest.importorskip("uvloop")
    fast = FastServer(1024)
    KServeServicer(DataPlane(ModelRegistry()), None).add_to_server(cast(grpc.aio.Server, fast))
    starts: list[int] = []

    def application(connection: Connection, stream: Stream) -> None:
        starts.append(stream.id)
        fast(connection, stream)

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> asyncio.Server:
        factory = server_factory(application, fast.limits, set())
        return await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)

    listener = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        raw = Raw(int(listener.sockets[0].getsockname()[1]))
        chunk = b"\x00" * 2048
        raw.sock.sendall(
            _frame(HEADERS, 0x4, 1, raw.headers(1))
            + _frame(DATA, 0, 1, b"\x00" + (8192).to_bytes(4, "big") + chunk)
            + b"".join(_frame(DATA, 0, 1, chunk) for _ in range(4))
            + (
                _frame(DATA, 0x1, 1, chunk)
                if end == "DATA"
                else _frame(HEADERS, 0x5, 1, raw.encoder.encode([("x-end", "1")]))
            )
        )
        frames = raw.frames(lambda f: f[0] == HEADERS and f[2] == 1 and f[1] & 0x1)
        frames += raw.frames(lambda f: False, timeout=1.0, settle=True)  # anything more
        raw.close()
        answers = [dict(_decoded(f[3])) for f in frames if f[0] == HEADERS and f[2] == 1]
        assert [a.get("grpc-status") for a in answers] == ["8"], answers
        assert starts == [1]
    finally:
        loop.call_soon_threadsafe(listener.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_client_that_never_reads_its_large_answers_is_not_read_either(
    server: RunningServer, models: dict[str, dict[int, BuiltModel]]
) -> None:
    """A client grants windows of 2 GiB, so flow control never stops the server, asks for
    100 KiB answers stream after stream and never reads one. Once its socket is full the server
    stops reading that connection too, instead of computing and buffering answers without
    bound; a tritonclient call on another connection is answered meanwhile, correctly."""
    built = models["linear"][2]
    x = np.random.default_rng(2).standard_normal((12800, 4)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="linear", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    message = request.SerializeToString()
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    infer = "/inference.GRPCInferenceService/ModelInfer"
    raw = Raw(int(server.grpc_target.rsplit(":", 1)[1]), preface=False)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    huge = (1 << 31) - 1
    raw.sock.sendall(
        PREFACE
        + _frame(SETTINGS, 0, 0, (0x4).to_bytes(2, "big") + huge.to_bytes(4, "big"))
        + _frame(WINDOW_UPDATE, 0, 0, (huge - 65535).to_bytes(4, "big"))
    )
    raw.sock.setblocking(False)
    calls = [
        _frame(HEADERS, 0x4, sid, raw.headers(sid, path=infer))
        + b"".join(
            _frame(DATA, 0x1 if at + 16384 >= len(body) else 0, sid, body[at : at + 16384])
            for at in range(0, len(body), 16384)
        )
        for sid in range(1, 2 * 1000, 2)
    ]  # 1,000 calls, 200 MiB, if the server read them all
    stream = memoryview(b"".join(calls))
    sent, stalled_since, deadline = 0, None, time.monotonic() + 30
    while sent < len(stream) and time.monotonic() < deadline:
        try:
            sent += raw.sock.send(stream[sent : sent + (1 << 20)])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 2.0:
                break  # the server has not read this connection for 2 s
            time.sleep(0.02)
    assert sent < len(stream) // 4, f"the server read {sent >> 20} MiB of a client reading nothing"
    client = grpcclient.InferenceServerClient(url=server.grpc_target)
    try:  # the stuck client still holds its connection and its unread answers
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32").set_data_from_numpy(x)
        began = time.monotonic()
        result = client.infer("linear", [tensor], client_timeout=10)
        np.testing.assert_allclose(result.as_numpy("y"), built.reference({"x": x})["y"], rtol=1e-5)
        assert time.monotonic() - began < 5.0
    finally:
        client.close()
    raw.close()
    deadline = time.monotonic() + 10  # its calls end with its connection: none left pending
    while True:
        scrape = httpx.get(f"{server.rest_url}/metrics", timeout=10).text
        pending = [
            float(line.rsplit(" ", 1)[1])
            for line in scrape.splitlines()
            if line.startswith('nv_inference_pending_request_count{model="linear"')
        ]
        if (pending and not any(pending)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert pending, scrape
    assert not any(pending), scrape
