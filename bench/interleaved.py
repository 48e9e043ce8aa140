"""Several servers measured close together in time, many times over, by one load process.

The problem this solves: on a small shared machine the spread between measuring windows is
far larger than a 20 µs or 3 % difference between two servers, so a handful of long windows
cannot resolve it. Here every server is up at once and one process (this one, on uvloop, its
garbage collector off) holds persistent connections to each for the whole run:

- **p50 at 1 client**: blocks of ``block`` sequential requests, one block per server in
  rotated order (A B C, B C A, C A B, ...), each block's p50 taken alone; the figure is the
  median of the per-round differences between servers (blocks tens of milliseconds apart).
- **req/s at N clients**: windows of ``window`` seconds, one per server in the same rotated
  order, N requests kept in flight on connections opened once (N HTTP/1.1 connections, or one
  HTTP/2 connection with N streams for gRPC: what one gRPC channel does). A window counts the
  answers that arrive between ``ramp`` seconds after its start (the pipeline is full) and its
  end; then no new request is sent and the window waits until the server has answered every
  request in flight (drained), so the next server starts alone. No process starts per window.

The generator is closed-loop and callback-driven: the next request is written from the
callback that read the last answer (no task per request), request bytes are encoded once, and
answers are not decoded (HTTP/1.1: the status and Content-Length; HTTP/2: frame headers, a DATA
frame and END_STREAM), so it costs a few tens of µs of CPU per request. It shares the CPU
with the servers, so its cost is measured per window too (``client_us``), with each server's
own CPU per request (front end, and its workers) over the same window.

gRPC goes over a raw HTTP/2 connection with a fixed, stateless header block (HPACK literals, no
dynamic table); ``check_grpc`` sends the same bytes with a real gRPC client first, because the
raw connection only sees that an answer carried a message.
"""

from __future__ import annotations

import asyncio
import gc
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
from bench_models import TINY
from protocols import GRPC_METHOD, payload

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
        import socket

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
        import socket

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


# -- servers, connections and the rotated rounds -----------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server under test: its label, its REST and gRPC ports, its front end's pid."""

    name: str
    rest: int
    grpc: int
    pid: int


def _schedstat_ns(pid: int) -> int:
    """The CPU time of every live thread of ``pid`` in ns (``/proc/PID/task/*/schedstat``:
    exact, where ``/proc/PID/stat`` counts 10 ms ticks, too coarse for a 70 ms block)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that ended: its time is lost to both ends of a window alike
    return total


def _cpu(pid: int, children: Sequence[int]) -> tuple[float, float]:
    """(the process's CPU seconds, its ``children``'s)."""
    return _schedstat_ns(pid) / 1e9, sum(_schedstat_ns(c) for c in children) / 1e9


def _children(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


@dataclass
class Connections:
    """A server's connections for one protocol: one for 1-client blocks, and ``clients``
    request slots for rate windows (HTTP/1.1: that many connections; HTTP/2: one)."""

    one: list[Any]
    many: list[Any]
    slots: int
    pid: int
    workers: list[int]
    reopen: Callable[[], Awaitable[Any]]


async def connect(target: Target, protocol: str, clients: int) -> Connections:
    """Open ``target``'s connections for ``protocol`` (``kserve_json``, ``tfs_rest`` or
    ``kserve_grpc``)."""
    loop = asyncio.get_running_loop()
    request = payload(protocol, TINY.name, TINY.example())
    if protocol == "kserve_grpc":

        async def h2() -> H2:
            _, conn = await loop.create_connection(
                lambda: H2(target.grpc, request), "127.0.0.1", target.grpc
            )
            await asyncio.wait_for(conn.ready, 30)
            return conn

        return Connections(
            [await h2()], [await h2()], clients, target.pid, _children(target.pid), h2
        )

    async def h1() -> H1:
        return (await loop.create_connection(lambda: H1(request), "127.0.0.1", target.rest))[1]

    opened = [await h1() for _ in range(clients + 1)]
    return Connections(opened[:1], opened[1:], clients, target.pid, _children(target.pid), h1)


async def reopened(conns: Connections, in_flight: int) -> list[Any]:
    """The connections a measure with ``in_flight`` requests uses, those the server closed
    opened again (a REST server closes a connection idle for 5 s: the 64-client connections
    while the 1-client blocks run)."""
    connections = conns.one if in_flight == 1 else conns.many
    for i, conn in enumerate(connections):
        if conn.transport.is_closing():
            connections[i] = await conns.reopen()
    return connections


async def measure(
    conns: Connections, *, in_flight: int, requests: int, seconds: float, ramp: float,
    latencies: bool,
) -> Run:  # fmt: skip
    """One block (``requests`` sequential requests, ``seconds`` = inf) or window (``in_flight``
    requests kept in flight for ``ramp + seconds``, answers counted after ``ramp``), drained."""
    loop = asyncio.get_running_loop()
    connections = await reopened(conns, in_flight)
    start = time.perf_counter_ns()
    run = Run(
        count_from_ns=start + int(ramp * 1e9),
        stop_ns=start + int((ramp + seconds) * 1e9) if seconds != float("inf") else 1 << 62,
        remaining=requests,
        latencies=[] if latencies else None,
        done=loop.create_future(),
    )
    slots = [connections[i % len(connections)] for i in range(in_flight)]
    for conn in connections:
        conn.run = run
    for conn in slots:
        if run.remaining <= 0:
            break
        run.remaining -= 1
        run.outstanding += 1
        conn.send()
    # A stalled server fails the run rather than hanging it.
    timeout = 60 + (ramp + seconds if seconds != float("inf") else requests * 0.05)
    try:
        await asyncio.wait_for(asyncio.shield(run.done), timeout)
    finally:
        for conn in connections:
            conn.run = None
    return run


@dataclass
class Series:
    """Per server, one value per round."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def rotations(names: Sequence[str], count: int) -> list[list[str]]:
    """``count`` orders of ``names``, rotated by one each round (A B C, B C A, C A B, ...)."""
    n = len(names)
    return [[*names[i % n :], *names[: i % n]] for i in range(count)]


async def p50_rounds(
    conns: dict[str, Connections], rounds: int, block: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """``rounds`` rounds of one ``block``-request block per server, rotated; per server and
    round the block's p50 (µs), its front end's CPU µs per request and this process's."""
    p50, front, client = Series(), Series(), Series()
    errors: dict[str, int] = {}
    answered: dict[str, int] = {}
    for index, order in enumerate(rotations(list(conns), rounds)):
        for name in order:
            cpu0, own0 = _cpu(conns[name].pid, ())[0], time.process_time()
            run = await measure(conns[name], in_flight=1, requests=block, seconds=float("inf"),
                                ramp=0.0, latencies=True)  # fmt: skip
            cpu1, own1 = _cpu(conns[name].pid, ())[0], time.process_time()
            assert run.latencies is not None
            errors[name] = errors.get(name, 0) + _checked(name, run)
            answered[name] = answered.get(name, 0) + run.completed
            p50.add(name, _median(run.latencies) / 1e3)
            front.add(name, (cpu1 - cpu0) / run.completed * 1e6)
            client.add(name, (own1 - own0) / run.completed * 1e6)
        if index % 50 == 49 or index == rounds - 1:
            progress(f"p50 round {index + 1}/{rounds}: " + ", ".join(
                f"{n} {p50.values[n][-1]:.0f} µs" for n in conns))  # fmt: skip
    return {
        "p50_us": p50.values,
        "front_us": front.values,
        "client_us": client.values,
        "errors": errors,
        "answered": answered,
    }


async def rate_rounds(
    conns: dict[str, Connections],
    rounds: int,
    window: float,
    ramp: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """``rounds`` rounds of one rate window per server, rotated; per server and round its
    req/s, its front end's and workers' CPU µs per request and this process's, over the whole
    window (ramp and drain included: CPU over every answer)."""
    rate, front, worker, client, busy = Series(), Series(), Series(), Series(), Series()
    errors: dict[str, int] = {}
    answered: dict[str, int] = {}
    for index, order in enumerate(rotations(list(conns), rounds)):
        for name in order:
            c = conns[name]
            await reopened(c, c.slots)  # before the CPU readings: the server's accept() too
            (f0, w0), own0, t0 = _cpu(c.pid, c.workers), time.process_time(), time.perf_counter()
            run = await measure(conns[name], in_flight=conns[name].slots, requests=1 << 40,
                                seconds=window, ramp=ramp, latencies=False)  # fmt: skip
            (f1, w1), own1, t1 = _cpu(c.pid, c.workers), time.process_time(), time.perf_counter()
            errors[name] = errors.get(name, 0) + _checked(name, run)
            answered[name] = answered.get(name, 0) + run.completed
            rate.add(name, run.counted / window)
            front.add(name, (f1 - f0) / run.completed * 1e6)
            worker.add(name, (w1 - w0) / run.completed * 1e6)
            client.add(name, (own1 - own0) / run.completed * 1e6)
            busy.add(name, (f1 - f0) / (t1 - t0))
        if index % 25 == 24 or index == rounds - 1:
            progress(f"rate round {index + 1}/{rounds}: " + ", ".join(
                f"{n} {rate.values[n][-1]:.0f} req/s" for n in conns))  # fmt: skip
    return {
        "rps": rate.values,
        "front_us": front.values,
        "worker_us": worker.values,
        "client_us": client.values,
        "front_busy": busy.values,
        "errors": errors,
        "answered": answered,
    }


def _checked(name: str, run: Run) -> int:
    """``run``'s failed requests; fails the measurement when more than 1 % failed (a few
    refusals under a loaded machine are counted and reported, not hidden)."""
    if run.errors:
        print(f"{name}: {run.errors} of {run.completed} requests failed: {run.error_sample!r}")
    if run.errors * 100 > run.completed:
        raise RuntimeError(f"{name}: {run.errors} of {run.completed} requests failed")
    return run.errors


def _median(values: list[int]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def check_grpc(port: int) -> None:
    """The request answered OK by a real gRPC client (the raw connection sees no status)."""
    import grpc

    request = payload("kserve_grpc", TINY.name, TINY.example())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        channel.unary_unary(GRPC_METHOD)(request, timeout=30)


async def interleaved(
    targets: Sequence[Target],
    protocol: str,
    *,
    p50_rounds_count: int,
    block: int,
    rate_rounds_count: int,
    window: float,
    ramp: float,
    clients: int,
    progress: Callable[[str], None] = print,
    warm: int = 200,
    warm_s: float = 0.3,
) -> dict[str, Any]:
    """Both measures over ``targets`` (all up at once) for ``protocol``: raw per-round series
    (``p50_rounds`` then ``rate_rounds``, each with its ``errors`` and ``answered`` requests per
    server), after a warm-up of each server (``warmed``: the requests it took, per server)."""
    if protocol == "kserve_grpc":
        for t in targets:
            check_grpc(t.grpc)
    conns: dict[str, Connections] = {}
    for t in targets:
        conns[t.name] = await connect(t, protocol, clients)
    gc.collect()
    gc.disable()  # no collection pause inside a block
    warmed: dict[str, int] = {}
    try:
        for name, conn in conns.items():  # warm: both paths, every server
            a = await measure(conn, in_flight=1, requests=warm, seconds=float("inf"), ramp=0,
                              latencies=False)  # fmt: skip
            b = await measure(conn, in_flight=conn.slots, requests=1 << 40, seconds=warm_s,
                              ramp=0, latencies=False)  # fmt: skip
            warmed[name] = a.completed + b.completed
        one = await p50_rounds(conns, p50_rounds_count, block, progress) if p50_rounds_count else {}
        many = (
            await rate_rounds(conns, rate_rounds_count, window, ramp, progress)
            if rate_rounds_count
            else {}
        )
    finally:
        gc.enable()
        for c in conns.values():
            for conn in {*c.one, *c.many}:
                conn.transport.close()
    return {"one": one, "many": many, "warmed": warmed}
