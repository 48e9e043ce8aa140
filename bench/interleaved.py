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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
from ab_throughput import Target
from bench_models import TINY
from protocols import GRPC_METHOD, payload
from rawconn import H1, H2, Run

# -- servers, connections and the rotated rounds -----------------------------------------------


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


async def _ceiling(kind: str, port: int, pid: int, seconds: float) -> dict[str, float]:
    """This load process against ``bench/trivial.py`` (answers at once): the most it can
    measure, at 1 client (p50 µs, req/s) and 64 (req/s), and its own CPU µs per request."""
    protocol = "kserve_grpc" if kind == "h2grpc" else "kserve_json"
    conns = await connect(Target(kind, port, port, pid), protocol, 64)
    gc.disable()
    out: dict[str, float] = {}
    for clients in (1, 64):
        own = time.process_time()
        run = await measure(conns, in_flight=clients, requests=1 << 40, seconds=seconds,
                            ramp=0.1, latencies=True)  # fmt: skip
        assert run.latencies is not None
        assert run.errors == 0
        out[f"rps_{clients}"] = run.counted / seconds
        out[f"client_us_{clients}"] = (time.process_time() - own) / run.completed * 1e6
        if clients == 1:
            out["p50_us_1"] = _median(run.latencies) / 1e3
    gc.enable()
    return out


def main() -> None:
    """``python bench/interleaved.py``: the load process's ceiling against ``bench/trivial.py``
    over HTTP/1.1 and over HTTP/2 gRPC (modelyard's own HTTP/2 server answering at once)."""
    import subprocess
    import sys

    import uvloop

    here = os.path.dirname(os.path.abspath(__file__))
    for kind in ("http", "h2grpc"):
        server = subprocess.Popen(
            [sys.executable, os.path.join(here, "trivial.py"), kind], stdout=subprocess.PIPE
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            print(kind, uvloop.run(_ceiling(kind, port, server.pid, 2.0)), flush=True)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
