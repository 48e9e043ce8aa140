"""A load generator that stays out of the way: raw HTTP/1.1 keep-alive and raw gRPC, on uvloop.

Run as its own process (``python bench/loadgen.py SPEC.json``) so it never shares an event loop
or a GIL with the server it measures. Request bodies are encoded once up front and responses
are not decoded (only the status and the body length are read), so the generator's cost per
request is a socket write and a header scan. Its ceiling is measured against a trivial endpoint
(``bench/trivial.py``) and reported next to the results.

Closed loop: ``concurrency`` clients, each sending its next request when the last one answers;
throughput and latency count the answers that arrive within the measured window.
Open loop: requests start on a Poisson schedule at ``rate`` per second whatever the server does,
and latency counts from the scheduled start, so a stalled server cannot hide its queueing
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_OPEN_LOOP_CONNECTIONS = 256
"""Open loop: requests beyond this many outstanding are counted as errors, not queued."""

Send = Callable[[], Awaitable[bool]]
"""One request; True when it got a success answer."""


@dataclass
class Spec:
    """What to load and how. ``payload`` is the whole HTTP request or the serialised gRPC
    message, base64-encoded (JSON has no bytes)."""

    protocol: str  # "http" or "grpc"
    host: str
    port: int
    payload_b64: str
    grpc_method: str = ""
    concurrencies: list[int] = field(default_factory=lambda: [1, 8, 64])
    open_rate_fraction: float = 0.5  # open loop at this share of the best closed-loop rate
    duration_s: float = 3.0
    warmup_s: float = 0.5


@dataclass
class Result:
    mode: str  # "closed" or "open"
    concurrency: int
    target_rate: float
    requests: int
    errors: int
    elapsed_s: float
    latencies_ms: list[float]


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time; reads Content-Length bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self._end = -1
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
            length = int(head[start : stop if stop >= 0 else len(head)])
            self._end = head_end + 4 + length
        if len(self._buffer) >= self._end:
            del self._buffer[: self._end]
            self._end = -1
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(self._status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))

    async def send(self, payload: bytes) -> bool:
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(payload)
        return await self._waiter == 200


async def _http_sender(spec: Spec, payload: bytes) -> Send:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_HttpConnection, spec.host, spec.port)

    async def send() -> bool:
        return await conn.send(payload)

    return send


async def _grpc_sender_factory(spec: Spec, payload: bytes) -> Callable[[], Awaitable[Send]]:
    import grpc

    channel = grpc.aio.insecure_channel(f"{spec.host}:{spec.port}")
    call = channel.unary_unary(spec.grpc_method)  # bytes in, bytes out: no (de)serialisation

    async def make() -> Send:
        async def send() -> bool:
            try:
                await call(payload)
            except grpc.aio.AioRpcError:
                return False
            return True

        return send

    return make


async def _senders(spec: Spec, payload: bytes) -> Callable[[], Awaitable[Send]]:
    if spec.protocol == "grpc":
        return await _grpc_sender_factory(spec, payload)

    async def make() -> Send:
        return await _http_sender(spec, payload)

    return make


async def closed_loop(spec: Spec, make: Callable[[], Awaitable[Send]], clients: int) -> Result:
    senders = [await make() for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    start = clock()
    measure_from = start + spec.warmup_s
    stop = measure_from + spec.duration_s

    async def client(send: Send) -> None:
        nonlocal errors
        while clock() < stop:
            began = clock()
            ok = await send()
            ended = clock()
            if measure_from <= ended < stop:
                latencies.append((ended - began) * 1e3)
                errors += not ok

    await asyncio.gather(*(client(s) for s in senders))
    # Answers that arrived inside the window, over the window: a request still in flight when
    # the window closes is awaited (a closed loop has to) but neither counted nor timed, so the
    # last round's wait (a whole batch at 64 clients) does not stretch the denominator.
    elapsed = spec.duration_s
    return Result("closed", clients, 0.0, len(latencies), errors, elapsed, latencies)


async def open_loop(spec: Spec, make: Callable[[], Awaitable[Send]], rate: float) -> Result:
    idle = [await make() for _ in range(8)]
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    rng = random.Random(0)
    tasks: set[asyncio.Task[None]] = set()
    start = clock()
    measure_from = start + spec.warmup_s
    stop = measure_from + spec.duration_s

    opened = len(idle)

    async def one(scheduled: float) -> None:
        nonlocal errors, opened
        if not idle and opened >= MAX_OPEN_LOOP_CONNECTIONS:
            errors += scheduled >= measure_from  # the server is this far behind: a failure
            return
        if idle:
            send = idle.pop()
        else:
            opened += 1
            send = await make()
        ok = await send()
        idle.append(send)
        if scheduled >= measure_from:
            latencies.append((clock() - scheduled) * 1e3)
            errors += not ok

    scheduled = start
    while scheduled < stop:
        scheduled += rng.expovariate(rate)
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    elapsed = spec.duration_s
    return Result("open", 0, rate, len(latencies), errors, elapsed, latencies)


async def run(spec: Spec) -> list[Result]:
    payload = base64.b64decode(spec.payload_b64)
    make = await _senders(spec, payload)
    results = [await closed_loop(spec, make, c) for c in spec.concurrencies]
    if spec.open_rate_fraction > 0:
        best = max(r.requests / r.elapsed_s for r in results)
        results.append(await open_loop(spec, make, max(1.0, best * spec.open_rate_fraction)))
    return results


def main() -> None:
    import uvloop

    spec = Spec(**json.loads(Path(sys.argv[1]).read_text()))
    results = uvloop.run(run(spec))
    json.dump([asdict(r) for r in results], sys.stdout)


if __name__ == "__main__":
    main()
