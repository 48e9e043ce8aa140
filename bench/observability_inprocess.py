"""The in-process parts of ``bench/observability_cost.py``: the real front end's KServe REST
and gRPC paths over a servable that answers at once, with statistics and metrics on or off;
their CPU time per request (``cpu_time``) and instructions per request under callgrind
(``callgrind``, which runs this file with ``--inprocess N`` under valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY
from protocols import GRPC_METHOD, payload

PYTHON = sys.executable

# -- in process: CPU time and instructions per request ----------------------------------------

YIELD_IN_INFER = False
"""Whether the in-process servable yields to the event loop once per call (set for runs with
many calls in flight, so they interleave as requests waiting on a worker do)."""

IN_PROCESS = ("kserve_json", "kserve_grpc")
"""The in-process paths: KServe REST JSON through the real Starlette app, and KServe gRPC
through the handler the gRPC server registers (with its wrappers), called as a server calls it."""


def _build(metrics: bool, protocol: str = "kserve_json") -> tuple[Any, Any]:
    """The real front end over an in-process servable that answers at once, with statistics
    and metrics on or off; and a coroutine function that sends it one KServe inference call
    over ``protocol`` (``IN_PROCESS``)."""
    from modelyard.config.schema import Platform
    from modelyard.ids import VersionKey
    from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
    from modelyard.lifecycle.states import ModelState
    from modelyard.metrics import ServerMetrics
    from modelyard.observability.boundary import Observer
    from modelyard.server.dataplane import DataPlane
    from modelyard.tensors import DataType, Signature, TensorSpec

    signature = Signature(
        (TensorSpec("x", DataType.FP32, (-1, TINY.in_features)),),
        (TensorSpec("y", DataType.FP32, (-1, TINY.out_features)),),
    )
    output = {"y": np.zeros((1, TINY.out_features), np.float32)}

    class Fixed:
        """A servable that answers at once with a fixed output: only server code counts."""

        @property
        def signature(self) -> Signature:
            return signature

        @property
        def signatures(self) -> dict[str, Signature]:
            return {"serving_default": signature}

        async def infer(self, inputs: Any, signature_name: str | None = None) -> Any:
            if YIELD_IN_INFER:  # many calls in flight: each waits once, as for a worker
                await asyncio.sleep(0)
            return output

        async def close(self) -> None:
            pass

    registry = ModelRegistry()
    entry = VersionEntry(VersionKey(TINY.name, 1), Platform.ONNX, signature=signature)
    entry.transition(ModelState.LOADING)
    entry.transition(ModelState.AVAILABLE)
    entry.replicas.append(Replica(Fixed(), "cpu"))  # type: ignore[arg-type]
    registry.add(entry)
    server_metrics = ServerMetrics(registry) if metrics else None
    dataplane = DataPlane(registry, metrics=server_metrics)
    dataplane.started = True
    observer = Observer(count=server_metrics.call_ended if server_metrics else None)
    raw = payload(protocol, TINY.name, np.ones((1, TINY.in_features), np.float32))
    statuses: dict[Any, int] = {}
    if protocol == "kserve_grpc":
        one = _grpc_call(dataplane, observer, raw, statuses)
    else:
        one = _rest_call(dataplane, observer, raw, statuses)

    def check(requests: int) -> None:
        if statuses != {"OK": requests}:
            raise SystemExit(f"not every request succeeded: {statuses}")
        counted = server_metrics.book.of(entry.key).success_count if server_metrics else requests
        if counted != requests:
            raise SystemExit("the statistics did not count every request")

    one.check = check  # type: ignore[attr-defined]
    return dataplane, one


def _rest_call(dataplane: Any, observer: Any, raw: bytes, statuses: dict[Any, int]) -> Any:
    """One KServe REST call through the real app, as uvicorn drives it."""
    from modelyard.server.http.app import build_app

    app = build_app(dataplane, max_request_bytes=1 << 20, observer=observer)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    path = lines[0].split(" ")[1]
    headers = [
        (k.strip().lower().encode(), v.strip().encode())
        for k, v in (line.split(":", 1) for line in lines[1:])
    ]

    async def one() -> None:
        done = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = "OK" if message["status"] == 200 else message["status"]
                statuses[status] = statuses.get(status, 0) + 1
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path,
                 "raw_path": b"", "query_string": b"", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}  # fmt: skip
        await app(scope, receive, send)

    return one


def _grpc_call(dataplane: Any, observer: Any, raw: bytes, statuses: dict[Any, int]) -> Any:
    """One KServe gRPC ``ModelInfer`` through the handler the server registers, wrapped as
    ``start_grpc_server`` wraps it (the malformed-request guard, then the observer outermost):
    deserialised, run and serialised as a gRPC server does, without the transport."""
    from modelyard.server.grpc.hotpath import serializer_passing_encoded
    from modelyard.server.grpc.kserve import KServeServicer
    from modelyard.server.grpc.observe import observed
    from modelyard.server.grpc.status import refuse_malformed

    found: dict[str, Any] = {}

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            found.update({f"/{service}/{name}": h for name, h in handlers.items()})

    KServeServicer(dataplane).add_to_server(Capture())  # type: ignore[arg-type]
    handler = refuse_malformed(found[GRPC_METHOD], GRPC_METHOD)
    if observer.active:
        handler = observed(handler, GRPC_METHOD, observer)
    deserialize, serialize, behavior = (
        handler.request_deserializer,
        serializer_passing_encoded(handler.response_serializer),  # as the server wraps it
        handler.unary_unary,
    )

    class Context:
        """What the handlers ask of a grpc.aio context on a successful call."""

        def time_remaining(self) -> float | None:
            return None

        def invocation_metadata(self) -> tuple[()]:
            return ()

        async def abort(self, code: Any, details: str) -> None:
            statuses[code] = statuses.get(code, 0) + 1
            raise RuntimeError(details)

    context = Context()

    async def one() -> None:
        response = await behavior(deserialize(raw), context)
        serialize(response)
        statuses["OK"] = statuses.get("OK", 0) + 1

    return one


async def _drive(one: Any, count: int, in_flight: int) -> None:
    """``count`` calls of ``one``, ``in_flight`` at a time."""
    left = count

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(caller() for _ in range(in_flight)))


def _inprocess(requests: int, metrics: bool, protocol: str, in_flight: int = 1) -> None:
    """Drive ``requests`` inference calls over ``protocol`` through the real front end,
    ``in_flight`` at a time (above 1 the servable yields once per call, so they interleave)."""
    global YIELD_IN_INFER
    YIELD_IN_INFER = in_flight > 1
    _, one = _build(metrics, protocol)
    warm = 64

    async def many() -> None:
        await _drive(one, warm, in_flight)
        gc.collect()  # warm: what lives now is never collected again (less noise)
        gc.freeze()
        await _drive(one, requests, in_flight)

    asyncio.run(many())
    one.check(warm + requests)


def cpu_time(
    rounds: int, batch: int, protocol: str = "kserve_json", in_flight: int = 1
) -> dict[str, Any]:
    """CPU µs per request of the in-process path over ``protocol``, on, off and on again (the
    A/A reference), in one process and one event loop, alternating batches of ``batch``
    requests in rotated order, ``in_flight`` calls at a time (above 1 the servable yields once
    per call, so they interleave): process CPU time is far less disturbed by other load than
    wall clock (it still pays for caches others evict). Per-round differences, summarised as
    ``ab_throughput.summarize`` does."""
    from ab_throughput import summarize

    global YIELD_IN_INFER
    YIELD_IN_INFER = in_flight > 1
    apps = {"on": _build(True, protocol)[1], "off": _build(False, protocol)[1]}
    apps["on2"] = _build(True, protocol)[1]
    per: dict[str, list[float]] = {name: [] for name in apps}

    async def run() -> None:
        for one in apps.values():  # warm up
            await _drive(one, batch, in_flight)
        names = list(apps)
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.process_time()
                await _drive(apps[name], batch, in_flight)
                per[name].append((time.process_time() - start) / batch * 1e6)

    asyncio.run(run())
    YIELD_IN_INFER = False
    return {
        "protocol": protocol,
        "rounds": rounds,
        "batch": batch,
        "in_flight": in_flight,
        "cpu_us_per_request_on": statistics.median(per["on"]),
        "cpu_us_per_request_off": statistics.median(per["off"]),
        "added": summarize([a - b for a, b in zip(per["on"], per["off"], strict=True)]),
        "added_aa": summarize([a - b for a, b in zip(per["on"], per["on2"], strict=True)]),
        "raw": per,
    }


def callgrind(
    small: int, large: int, protocol: str = "kserve_json", in_flight: int = 1
) -> dict[str, Any]:
    """Instructions per request over ``protocol``, on and off: four runs under callgrind,
    side by side (each is single-threaded; on a shared machine running them at once gets them
    more of it)."""
    runs: dict[tuple[str, int], tuple[subprocess.Popen[str], str]] = {}
    with tempfile.TemporaryDirectory() as out:
        for metrics in (True, False):
            for n in (small, large):
                name = "on" if metrics else "off"
                command = [
                    "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/{name}-{n}.out",
                    PYTHON, __file__, "--inprocess", str(n), "--protocol", protocol,
                    "--in-flight", str(in_flight),
                    *(["--metrics"] if metrics else []),
                ]  # fmt: skip
                # A fixed hash seed: the same dict layouts in every run (less noise).
                env = {**os.environ, "PYTHONHASHSEED": "0"}
                process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
                runs[(name, n)] = (process, "")
        counts: dict[str, dict[int, int]] = {}
        for (name, n), (process, _) in runs.items():
            _, stderr = process.communicate(timeout=7200)
            if process.returncode != 0:
                raise RuntimeError(f"callgrind run {name} {n} failed:\n{stderr[-2000:]}")
            total = next(
                int(line.split()[-1].replace(",", ""))
                for line in stderr.splitlines()
                if "Collected" in line
            )
            counts.setdefault(name, {})[n] = total
            print(
                f"callgrind {protocol} metrics={name} n={n} in flight {in_flight}: "
                f"{total:,} instructions",
                flush=True,
            )
    per = {k: (v[large] - v[small]) / (large - small) for k, v in counts.items()}
    return {
        "protocol": protocol,
        "in_flight": in_flight,
        "requests": [small, large],
        "instructions_per_request_on": per["on"],
        "instructions_per_request_off": per["off"],
        "added_instructions_per_request": per["on"] - per["off"],
        "added_pct": 100 * (per["on"] - per["off"]) / per["off"],
        "raw": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="one in-process run (for callgrind)")
    parser.add_argument("--inprocess", type=int, required=True)
    parser.add_argument("--protocol", default="kserve_json")
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--metrics", action="store_true")
    args = parser.parse_args()
    _inprocess(args.inprocess, args.metrics, args.protocol, args.in_flight)


if __name__ == "__main__":
    main()
