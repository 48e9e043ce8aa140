"""What statistics and metrics cost per request (issue 16): on (the default, tracing off)
against ``--no-metrics``, measured three ways in one run, printed as one Markdown table.

1. In one process, CPU time (``--cpu-rounds``): the KServe REST path (the real Starlette app,
   data plane and hooks) and the KServe gRPC path (the ``ModelInfer`` handler as the gRPC server
   registers it, wrappers included, without the transport), over an in-process servable that
   answers at once, so only server code is timed; on and off side by side in one event loop,
   alternating batches; medians of per-request CPU time.
2. End to end, wall clock: two ``modelyard serve`` processes on the same config (the tiny ONNX
   MLP, unbatched), one default and one with ``--no-metrics``, loaded by the load generator
   (``bench/loadgen.py``, its own process): p50 latency at 1 client and requests per second at
   64 clients, KServe REST JSON and KServe gRPC. In turn (the default): rounds alternate A B /
   B A so drift in the machine's load falls on both; medians over rounds. ``--paired`` adds
   one client alternating its requests between the two servers (median of pair differences)
   and 64 clients on both servers at once (the ratio of their rates).
   ``--h2load N``: three servers (on, off, and on again) loaded by h2load at 64 clients in N
   short rounds, together and alternating (``bench/ab_throughput.py``): the median of the
   per-round ratios with their min and max, and on/on, the method's A/A noise floor, beside
   on/off; p50 at 1 client alternating over on/off and over on/on.
3. Instructions per request (``--callgrind``): the in-process paths under valgrind's callgrind,
   for N1 and N2 requests; (I(N2) - I(N1)) / (N2 - N1) is the cost of one request without
   start-up. On a loaded machine this is the stable number; wall-clock figures there move by
   more than the cost.

    python bench/observability_cost.py --h2load 12 --seconds 1.5 --no-wall-clock [--callgrind]
        [--json out.json] [--table out.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY, write_mlp
from protocols import GRPC_METHOD, payload
from report import git_state

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@contextmanager
def serve(config: Path, root: Path, *flags: str) -> Iterator[dict[str, int]]:
    ports_file = root / f"ports{'-'.join(flags)}.json"
    command = [PYTHON, "-m", "modelyard", "serve", str(config), "--port", "0",
               "--rest_api_port", "0", f"--ports-file={ports_file}", "--log-level", "WARNING",
               *flags]  # fmt: skip
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(root / "cache")}
    env["MODELYARD_INTRA_OP_THREADS"] = "1"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while not ports_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"modelyard serve {flags} did not start")
            time.sleep(0.1)
        ports: dict[str, int] = json.loads(ports_file.read_text())
        ports["pid"] = process.pid  # for its CPU time (bench/ab_throughput.py)
        while httpx.get(f"http://127.0.0.1:{ports['rest']}/v2/health/ready").status_code != 200:
            time.sleep(0.1)
        yield ports
    finally:
        process.terminate()
        process.wait(60)


def load(port: int, protocol: str, clients: int, seconds: float) -> dict[str, float]:
    x = np.ones((1, TINY.in_features), np.float32)
    spec = {
        "protocol": "grpc" if protocol == "kserve_grpc" else "http",
        "host": "127.0.0.1",
        "port": port,
        "payload_b64": base64.b64encode(payload(protocol, TINY.name, x)).decode(),
        "grpc_method": GRPC_METHOD if protocol == "kserve_grpc" else "",
        "concurrencies": [clients],
        "open_rate_fraction": 0.0,
        "duration_s": seconds,
        "warmup_s": 0.5,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = subprocess.run(
        [PYTHON, str(Path(__file__).parent / "loadgen.py"), f.name],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    os.unlink(f.name)
    (result,) = json.loads(out.stdout)
    return {
        "p50_ms": float(np.percentile(result["latencies_ms"], 50)),
        "rps": result["requests"] / result["elapsed_s"],
        "errors": result["errors"],
    }


def wall_clock(rounds: int, seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="obs-cost-"))
    write_mlp(TINY, root / TINY.name / "1")
    config = root / "modelyard.yaml"
    config.write_text(f"models:\n  - name: {TINY.name}\n    base_path: {root / TINY.name}\n")
    results: dict[str, dict[str, list[float]]] = {}
    with serve(config, root) as on, serve(config, root, "--no-metrics") as off:
        servers = {"on": on, "off": off}
        for index in range(rounds):
            order = ["on", "off"] if index % 2 == 0 else ["off", "on"]
            for protocol in ("kserve_json", "kserve_grpc"):
                for name in order:
                    port = servers[name]["grpc" if protocol == "kserve_grpc" else "rest"]
                    one = load(port, protocol, 1, seconds)
                    many = load(port, protocol, 64, seconds)
                    row = results.setdefault(f"{protocol}/{name}", {"p50_ms": [], "rps": []})
                    row["p50_ms"].append(one["p50_ms"])
                    row["rps"].append(many["rps"])
                    print(f"round {index} {protocol:12} {name:3}: p50 {one['p50_ms']:.3f} ms "
                          f"at 1 client, {many['rps']:.0f} req/s at 64", flush=True)  # fmt: skip
    summary: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "raw": results}
    for protocol in ("kserve_json", "kserve_grpc"):
        on, off = results[f"{protocol}/on"], results[f"{protocol}/off"]
        # Paired by round (each pair ran back to back), then the median of the differences.
        p50_deltas = [(a - b) * 1000 for a, b in zip(on["p50_ms"], off["p50_ms"], strict=True)]
        rps_ratios = [a / b for a, b in zip(on["rps"], off["rps"], strict=True)]
        summary[protocol] = {
            "p50_ms_on": statistics.median(on["p50_ms"]),
            "p50_ms_off": statistics.median(off["p50_ms"]),
            "p50_added_us_median_of_pairs": statistics.median(p50_deltas),
            "rps_on": statistics.median(on["rps"]),
            "rps_off": statistics.median(off["rps"]),
            "rps_loss_pct_median_of_pairs": 100 * (1 - statistics.median(rps_ratios)),
        }
    return summary


# -- wall clock, paired: both servers under the same load at the same moment ---------------------


def _spec(port: int, protocol: str) -> Any:
    from loadgen import Spec

    x = np.ones((1, TINY.in_features), np.float32)
    return Spec(
        protocol="grpc" if protocol == "kserve_grpc" else "http",
        host="127.0.0.1",
        port=port,
        payload_b64=base64.b64encode(payload(protocol, TINY.name, x)).decode(),
        grpc_method=GRPC_METHOD if protocol == "kserve_grpc" else "",
    )


async def _paired_latency(specs: dict[str, Any], requests: int) -> dict[str, Any]:
    """One client, alternating its requests between the two servers (A B, then B A): each
    pair ran under the same load, so the median of the pair differences is the cost."""
    import loadgen

    sends = {}
    for name, spec in specs.items():
        make = await loadgen._senders(spec, base64.b64decode(spec.payload_b64))
        sends[name] = await make()
    for _ in range(200):  # warm up
        for send in sends.values():
            await send()
    latencies: dict[str, list[float]] = {"on": [], "off": []}
    clock = time.perf_counter
    for index in range(requests):
        for name in ("on", "off") if index % 2 == 0 else ("off", "on"):
            began = clock()
            await sends[name]()
            latencies[name].append((clock() - began) * 1e6)
    pairs = [a - b for a, b in zip(latencies["on"], latencies["off"], strict=True)]
    return {
        "requests": requests,
        "p50_us_on": statistics.median(latencies["on"]),
        "p50_us_off": statistics.median(latencies["off"]),
        "added_us_median_of_pairs": statistics.median(pairs),
    }


def _simultaneous_throughput(
    ports: dict[str, int], protocol: str, seconds: float
) -> dict[str, float]:
    """64 clients on each server at the same time (two load generators): both servers share
    the machine under the same conditions, so the ratio of their rates is the relative cost."""
    processes = {}
    for name, port in ports.items():
        spec = _spec(port, protocol).__dict__ | {
            "concurrencies": [64], "open_rate_fraction": 0.0, "duration_s": seconds,
            "warmup_s": 0.5,
        }  # fmt: skip
        path = Path(tempfile.mkstemp(suffix=".json")[1])
        path.write_text(json.dumps(spec))
        processes[name] = (
            subprocess.Popen(
                [PYTHON, str(Path(__file__).parent / "loadgen.py"), str(path)],
                stdout=subprocess.PIPE,
                text=True,
            ),
            path,
        )
    rates = {}
    for name, (process, path) in processes.items():
        out, _ = process.communicate(timeout=120)
        path.unlink()
        (result,) = json.loads(out)
        rates[name] = result["requests"] / result["elapsed_s"]
    return rates


def paired(rounds: int, requests: int, seconds: float) -> dict[str, Any]:
    import uvloop

    root = Path(tempfile.mkdtemp(prefix="obs-paired-"))
    write_mlp(TINY, root / TINY.name / "1")
    config = root / "modelyard.yaml"
    config.write_text(f"models:\n  - name: {TINY.name}\n    base_path: {root / TINY.name}\n")
    report: dict[str, Any] = {}
    with serve(config, root) as on, serve(config, root, "--no-metrics") as off:
        servers = {"on": on, "off": off}
        for protocol in ("kserve_json", "kserve_grpc"):
            key = "grpc" if protocol == "kserve_grpc" else "rest"
            specs = {name: _spec(ports[key], protocol) for name, ports in servers.items()}
            latency = uvloop.run(_paired_latency(specs, requests))
            ratios = []
            for _ in range(rounds):
                rates = _simultaneous_throughput(
                    {n: p[key] for n, p in servers.items()}, protocol, seconds
                )
                ratios.append(rates["on"] / rates["off"])
                print(f"{protocol}: simultaneous {rates['on']:.0f} (on) vs {rates['off']:.0f} "
                      "(off) req/s", flush=True)  # fmt: skip
            report[protocol] = {
                **latency,
                "throughput_ratio_on_over_off": ratios,
                "throughput_loss_pct_median": 100 * (1 - statistics.median(ratios)),
            }
            print(protocol, json.dumps(report[protocol]), flush=True)
    return report


# -- wall clock with h2load: a 64-client comparison that states its own resolution ------------


def h2load_part(rounds: int, seconds: float, modes: list[str], requests: int) -> dict[str, Any]:
    """Three servers on one config: ``on`` (the default), ``off`` (``--no-metrics``) and
    ``on2`` (the default again). Per protocol: p50 at 1 client, one client alternating its
    requests over on/off and over on/on2 (median of pair differences); req/s at 64 clients
    with h2load in each of ``modes`` (``bench/ab_throughput.py``): median of per-round ratios
    on/off with their min and max, and on/on2, the method's noise floor, beside it."""
    import uvloop
    from ab_throughput import Target, compare

    root = Path(tempfile.mkdtemp(prefix="obs-h2load-"))
    write_mlp(TINY, root / TINY.name / "1")
    config = root / "modelyard.yaml"
    config.write_text(f"models:\n  - name: {TINY.name}\n    base_path: {root / TINY.name}\n")
    report: dict[str, Any] = {"rounds": rounds, "seconds": seconds}
    with (
        serve(config, root) as on,
        serve(config, root, "--no-metrics") as off,
        serve(config, root, "--log-level", "WARNING") as on2,  # the default flags again
    ):
        servers = {"on": on, "off": off, "on2": on2}
        targets = [Target(n, p["rest"], p["grpc"], p["pid"]) for n, p in servers.items()]
        for protocol in ("kserve_json", "kserve_grpc"):
            key = "grpc" if protocol == "kserve_grpc" else "rest"
            part: dict[str, Any] = {}
            for other in ("off", "on2"):
                specs = {
                    "on": _spec(on[key], protocol),
                    "off": _spec(servers[other][key], protocol),
                }
                part[f"latency_on_{other}"] = uvloop.run(_paired_latency(specs, requests))
            for mode in modes:
                part[mode] = compare(targets, protocol, mode, rounds, seconds)
                shown = {k: v for k, v in part[mode].items() if k != "raw"}
                print(protocol, mode, json.dumps(shown), flush=True)
            report[protocol] = part
    return report


# -- in process: CPU time and instructions per request ----------------------------------------

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


def _inprocess(requests: int, metrics: bool, protocol: str) -> None:
    """Drive ``requests`` inference calls over ``protocol`` through the real front end."""
    _, one = _build(metrics, protocol)
    warm = 50

    async def many() -> None:
        for index in range(warm + requests):
            await one()
            if index == warm - 1:  # warm: what lives now is never collected again (less noise)
                gc.collect()
                gc.freeze()

    asyncio.run(many())
    one.check(warm + requests)


def cpu_time(rounds: int, batch: int, protocol: str = "kserve_json") -> dict[str, Any]:
    """CPU seconds per request of the in-process path over ``protocol``, on and off, in one
    process and one event loop, alternating batches of ``batch`` requests: process CPU time
    is far less disturbed by other load than wall clock (it still pays for caches others
    evict)."""
    _, on = _build(True, protocol)
    _, off = _build(False, protocol)
    per: dict[str, list[float]] = {"on": [], "off": []}

    async def run() -> None:
        for _ in range(batch):  # warm up both
            await on()
            await off()
        for index in range(rounds):
            order = [("on", on), ("off", off)] if index % 2 == 0 else [("off", off), ("on", on)]
            for name, one in order:
                start = time.process_time()
                for _ in range(batch):
                    await one()
                per[name].append((time.process_time() - start) / batch * 1e6)

    asyncio.run(run())
    deltas = [a - b for a, b in zip(per["on"], per["off"], strict=True)]
    return {
        "protocol": protocol,
        "rounds": rounds,
        "batch": batch,
        "cpu_us_per_request_on": statistics.median(per["on"]),
        "cpu_us_per_request_off": statistics.median(per["off"]),
        "added_cpu_us_median_of_pairs": statistics.median(deltas),
        "raw": per,
    }


def callgrind(small: int, large: int, protocol: str = "kserve_json") -> dict[str, Any]:
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
            print(f"callgrind {protocol} metrics={name} n={n}: {total:,} instructions", flush=True)
    per = {k: (v[large] - v[small]) / (large - small) for k, v in counts.items()}
    return {
        "protocol": protocol,
        "requests": [small, large],
        "instructions_per_request_on": per["on"],
        "instructions_per_request_off": per["off"],
        "added_instructions_per_request": per["on"] - per["off"],
        "added_pct": 100 * (per["on"] - per["off"]) / per["off"],
        "raw": counts,
    }


# -- the table of docs/operations.md -------------------------------------------------------------

_NAMES = {"kserve_json": "KServe REST JSON", "kserve_grpc": "KServe gRPC"}


def table(report: dict[str, Any]) -> str:
    """The issue's figures as a Markdown table, from whatever parts ``report`` holds: per
    protocol, p50 at 1 client and req/s at 64 clients, on and off, and what statistics and
    metrics add; then the front end's CPU (and instructions) per request, on and off."""
    rows = ["| measure | protocol | on | off | added |", "| --- | --- | --- | --- | --- |"]
    paired = report.get("paired", {})
    turns = report.get("wall_clock", {})
    for protocol in ("kserve_json", "kserve_grpc"):
        name = _NAMES[protocol]
        if protocol in paired:
            got = paired[protocol]
            rows.append(
                f"| p50 at 1 client, alternating requests ({got['requests']} pairs) | {name} "
                f"| {got['p50_us_on']:.1f} µs | {got['p50_us_off']:.1f} µs "
                f"| **{got['added_us_median_of_pairs']:+.1f} µs** |"
            )
        if protocol in turns:
            got = turns[protocol]
            rows.append(
                f"| p50 at 1 client, servers in turn ({turns['rounds']} rounds) | {name} "
                f"| {got['p50_ms_on'] * 1000:.1f} µs | {got['p50_ms_off'] * 1000:.1f} µs "
                f"| {got['p50_added_us_median_of_pairs']:+.1f} µs |"
            )
            rows.append(
                f"| req/s at 64 clients, servers in turn ({turns['rounds']} rounds) | {name} "
                f"| {got['rps_on']:.0f} | {got['rps_off']:.0f} "
                f"| **{-got['rps_loss_pct_median_of_pairs']:+.1f} %** |"
            )
        if protocol in paired:
            got = paired[protocol]
            ratios = got["throughput_ratio_on_over_off"]
            rows.append(
                f"| req/s at 64 clients, both servers at once ({len(ratios)} rounds, on/off) "
                f"| {name} | | | {-got['throughput_loss_pct_median']:+.1f} % |"
            )
    h2 = report.get("h2load", {})
    for protocol in ("kserve_json", "kserve_grpc") if h2 else ():
        rows += _h2load_rows(h2, protocol)
    for part in report.get("cpu_time", []):
        rows.append(
            f"| front-end CPU per request, in process ({part['rounds']} alternating rounds of "
            f"{part['batch']}) | {_NAMES[part['protocol']]} | {part['cpu_us_per_request_on']:.1f}"
            f" µs | {part['cpu_us_per_request_off']:.1f} µs "
            f"| **{part['added_cpu_us_median_of_pairs']:+.1f} µs** |"
        )
    for part in report.get("callgrind", []):
        rows.append(
            f"| instructions per request, in process (callgrind) | {_NAMES[part['protocol']]} "
            f"| {part['instructions_per_request_on']:,.0f} "
            f"| {part['instructions_per_request_off']:,.0f} "
            f"| {part['added_instructions_per_request']:+,.0f} ({part['added_pct']:.1f} %) |"
        )
    return "\n".join(rows) + "\n"


def _spread(got: dict[str, Any]) -> str:
    """A ratio's median as a change in per cent, with the per-round min and max."""
    lo, hi = 100 * (got["min"] - 1), 100 * (got["max"] - 1)
    return f"{100 * (got['median'] - 1):+.1f} % [{lo:+.1f}, {hi:+.1f}]"


def _h2load_rows(h2: dict[str, Any], protocol: str) -> list[str]:
    name, part, rows = _NAMES[protocol], h2[protocol], []
    for other, what in (("off", "on vs off"), ("on2", "**A/A noise**: on vs on")):
        got = part[f"latency_on_{other}"]
        rows.append(
            f"| p50 at 1 client, alternating requests ({got['requests']} pairs), {what} | {name} "
            f"| {got['p50_us_on']:.1f} µs | {got['p50_us_off']:.1f} µs "
            f"| {got['added_us_median_of_pairs']:+.1f} µs |"
        )
    for mode in ("together", "alternating"):
        if mode not in part:
            continue
        got = part[mode]
        how = f"h2load, {mode}, {got['rounds']} rounds of {got['seconds']:g} s"
        rows.append(
            f"| req/s at {got['clients']} clients ({how}), on vs off, median [min, max] "
            f"| {name} | {got['on']['rps']:.0f} | {got['off']['rps']:.0f} "
            f"| **{_spread(got['on/off'])}** |"
        )
        rows.append(
            f"| req/s at {got['clients']} clients ({how}), **A/A noise**: on vs on "
            f"| {name} | {got['on']['rps']:.0f} | {got['on2']['rps']:.0f} "
            f"| {_spread(got['on/on2'])} |"
        )
        for part_name in ("front", "worker"):
            field = f"{part_name}_us"
            rows.append(
                f"| {part_name} CPU per request at {got['clients']} clients ({how}; on2: "
                f"{got['on2'][field]:.1f} µs) | {name} | {got['on'][field]:.1f} µs "
                f"| {got['off'][field]:.1f} µs | {got['on'][field] - got['off'][field]:+.1f} µs |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--no-wall-clock", action="store_true")
    parser.add_argument(
        "--paired", action="store_true",
        help="also the paired wall-clock measures (alternating requests, both servers at once)",
    )  # fmt: skip
    parser.add_argument(
        "--h2load", type=int, default=0, metavar="ROUNDS",
        help="the h2load comparison (on, off and on again, for the A/A noise) in ROUNDS rounds",
    )  # fmt: skip
    parser.add_argument("--h2load-modes", default="together,alternating")
    parser.add_argument("--cpu-rounds", type=int, default=20, help="0: skip the CPU-time part")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--table", type=Path, help="also write the Markdown table here")
    parser.add_argument("--inprocess", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--protocol", default="kserve_json", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess is not None:
        _inprocess(args.inprocess, args.metrics, args.protocol)
        return
    report: dict[str, Any] = {"git": _git()}
    if args.cpu_rounds:
        report["cpu_time"] = [cpu_time(args.cpu_rounds, 300, p) for p in IN_PROCESS]
        for part in report["cpu_time"]:
            print(json.dumps({k: v for k, v in part.items() if k != "raw"}), flush=True)
    if args.callgrind:
        report["callgrind"] = [callgrind(100, 600, p) for p in IN_PROCESS]
    if args.h2load:
        modes = args.h2load_modes.split(",")
        report["h2load"] = h2load_part(args.h2load, args.seconds, modes, 3000)
    if args.paired:
        report["paired"] = paired(args.rounds, 3000, args.seconds)
    if not args.no_wall_clock:
        report["wall_clock"] = wall_clock(args.rounds, args.seconds)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    markdown = table(report)
    print(markdown)
    if args.table is not None:
        args.table.write_text(markdown)


def _git() -> str:
    """The commit measured (with ``+`` when ``src`` has changes), for the record."""
    head, dirty = git_state("src")
    return head + ("+" if dirty else "")


if __name__ == "__main__":
    main()
