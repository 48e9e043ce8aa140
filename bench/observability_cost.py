"""What statistics and metrics cost per request (issue 16): on (the default, tracing off)
against ``--no-metrics``, with an A/A contrast (what the method cannot resolve), measured in
one run, printed as one Markdown table with a verdict per goal.

1. End to end (``--p50-rounds``, ``--rate-rounds``): ``--per-arm`` ``modelyard serve``
   processes with the defaults and as many with ``--no-metrics`` (the tiny ONNX MLP,
   unbatched), all up at once, started alike (``PYTHONHASHSEED=0``, ``setarch -R``), loaded by
   this process alone over persistent connections (``bench/interleaved.py``): per round, one
   block of ``--block`` sequential requests per server (its p50) and, in the second phase, one
   ``--window``-second window of 64 requests in flight per server (its req/s), order rotated
   every round; each server's front-end and worker CPU per request over the same blocks and
   windows. Per round an arm's value is the mean of its processes; the figure is the median of
   the per-round differences on - off with a bootstrap 95 % interval, and the A/A contrast
   the same for two groups made of half of each arm (on, off2 against off, on2; on against on2
   with one process per arm). A goal (added p50 at most 20 µs, loss at most 3 %) is met when
   the whole interval is within it, missed when the whole interval is beyond it; otherwise
   "not resolved", with the interval; the verdict says when the A/A interval leaves out 0 or
   is wider than the goal.
2. In one process, CPU time (``--cpu-rounds``): the KServe REST path (the real Starlette app,
   data plane and hooks) and the KServe gRPC path (the ``ModelInfer`` handler as the gRPC server
   registers it, wrappers included, without the transport), over an in-process servable that
   answers at once, 1 and 64 calls in flight (``--in-flight``); on, off and on2 side by side in
   one event loop, rotated batches.
3. Instructions per request (``--callgrind``): the in-process paths under valgrind's callgrind,
   for N1 and N2 requests; (I(N2) - I(N1)) / (N2 - N1) is the cost of one request without
   start-up. On a loaded machine this is the stable number. (The real front end's, on and
   off: ``bench/frontend_callgrind.py``.)

    python bench/observability_cost.py --p50-rounds 300 --block 100 --rate-rounds 96 \
        --window 0.3 --per-arm 2 [--protocols kserve_json,kserve_grpc] [--cpu-rounds 12] \
        [--callgrind] [--json out.json] [--table out.md]

It prints how long the end-to-end part takes before it starts (for a quiet machine).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from ab_throughput import verdict
from bench_models import TINY, write_mlp
from protocols import GRPC_METHOD, payload
from report import git_state

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@contextmanager
def serve(config: Path, root: Path, *flags: str, name: str = "") -> Iterator[dict[str, int]]:
    ports_file = root / f"ports-{name or '-'.join(flags)}.json"
    command = [PYTHON, "-m", "modelyard", "serve", str(config), "--port", "0",
               "--rest_api_port", "0", f"--ports-file={ports_file}", "--log-level", "WARNING",
               *flags]  # fmt: skip
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(root / "cache")}
    env["MODELYARD_INTRA_OP_THREADS"] = "1"
    # Two servers with the same flags must be the same process as far as possible: the same
    # string hashes (dict layouts) and, with setarch -R, the same addresses (no ASLR; it is
    # inherited by the workers). Otherwise two identical servers differ by tens of µs of CPU
    # per request (the A/A figure), which no number of rounds averages away.
    env["PYTHONHASHSEED"] = "0"
    if shutil.which("setarch"):
        command = ["setarch", platform.machine(), "-R", *command]
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


def ab_part(
    protocols: tuple[str, ...],
    *,
    p50_rounds: int,
    block: int,
    rate_rounds: int,
    window: float,
    ramp: float = 0.05,
    clients: int = 64,
    per_arm: int = 2,
) -> dict[str, Any]:
    """``per_arm`` servers with the defaults (``on``: statistics and metrics on, tracing off)
    and as many with ``--no-metrics`` (``off``), one config, all up at once (``arms``), loaded
    by this process alone (``bench/interleaved.py``): per protocol, ``p50_rounds`` rounds of one
    ``block``-request block at 1 client per server, then ``rate_rounds`` rounds of one
    ``window``-second window at ``clients`` clients per server, order rotated every round;
    paired per round, on against off, and the A/A contrast."""
    from interleaved import Target, interleaved

    root = Path(tempfile.mkdtemp(prefix="obs-ab-"))
    write_mlp(TINY, root / TINY.name / "1")
    config = root / "modelyard.yaml"
    config.write_text(f"models:\n  - name: {TINY.name}\n    base_path: {root / TINY.name}\n")
    report: dict[str, Any] = {}
    names, groups = arms(per_arm)
    with ExitStack() as stack:
        targets = []
        for index, name in enumerate(names):
            flags = ["--no-metrics"] if name.startswith("off") else []
            p = stack.enter_context(serve(config, root, *flags, name=f"{index}"))
            targets.append(Target(name, p["rest"], p["grpc"], p["pid"]))
        for protocol in protocols:
            started = time.monotonic()
            raw = _uvloop_run(
                interleaved(
                    targets, protocol, p50_rounds_count=p50_rounds, block=block,
                    rate_rounds_count=rate_rounds, window=window, ramp=ramp, clients=clients,
                    progress=lambda line, p=protocol: print(p, line, flush=True),
                )
            )  # fmt: skip
            got = summarize_rounds(raw, groups)
            got.update(
                protocol=protocol, p50_rounds=p50_rounds, block=block, rate_rounds=rate_rounds,
                per_arm=per_arm,
                window=window, ramp=ramp, clients=clients, raw=raw,
                seconds=time.monotonic() - started,
            )  # fmt: skip
            report[protocol] = got
            print(protocol, json.dumps(_shown(got)), flush=True)
    return report


def _uvloop_run(coroutine: Any) -> Any:
    import uvloop

    return uvloop.run(coroutine)


def arms(per_arm: int) -> tuple[list[str], dict[str, list[str]]]:
    """The servers to start for ``per_arm`` processes per arm, in start order, and the groups
    the figures compare: ``on`` against ``off`` (the arms), and the A/A contrast ``on`` against
    ``on2``. With one process per arm that is three servers (on, off, on2): the A/A compares
    two processes with the same flags. With two or more (on, off, on2, off2, ...), an arm's
    figure is the mean of its processes, and the A/A contrast swaps half of each arm (on, off2
    against off, on2, ...): groups of the same size as the arms, each half on and half off, so
    a real effect cancels in it and what it shows is what the spread between processes with
    the same flags does to a figure of that size."""
    if per_arm == 1:
        return ["on", "off", "on2"], {"on": ["on"], "off": ["off"], "on2": ["on2"]}
    ons = ["on", *(f"on{i}" for i in range(2, per_arm + 1))]
    offs = ["off", *(f"off{i}" for i in range(2, per_arm + 1))]
    half = per_arm // 2
    placebo_a = [*ons[: per_arm - half], *offs[per_arm - half :]]
    placebo_b = [*offs[: per_arm - half], *ons[per_arm - half :]]
    names = [n for pair in zip(ons, offs, strict=True) for n in pair]
    return names, {"on": ons, "off": offs, "aa_a": placebo_a, "aa_b": placebo_b}


def summarize_rounds(raw: dict[str, Any], groups: dict[str, list[str]]) -> dict[str, Any]:
    """Per group (``arms``) the median over rounds of its per-round mean; per round the
    differences on - off and (A/A) on - on2, or aa_a - aa_b with several processes per arm,
    summarised (``ab_throughput.summarize``): p50 in µs, req/s in per cent, CPU per request in
    µs. Keys ``on-off`` and ``on-on2`` either way."""
    from ab_throughput import summarize

    one, many = raw["one"], raw["many"]

    def arm(series: dict[str, list[float]] | None, group: str) -> list[float]:
        if not series:
            return []
        members = [series[n] for n in groups[group]]
        return [statistics.fmean(v) for v in zip(*members, strict=True)]

    out: dict[str, Any] = {"groups": groups}
    for g in groups:
        out[g] = {
            key: statistics.median(arm(series, g)) if series else float("nan")
            for key, series in (
                ("p50_us", one.get("p50_us")), ("rps", many.get("rps")),
                ("front_us_one", one.get("front_us")), ("front_us_many", many.get("front_us")),
                ("worker_us_many", many.get("worker_us")),
                ("client_us_one", one.get("client_us")), ("client_us_many", many.get("client_us")),
                ("front_busy_many", many.get("front_busy")),
            )
        }  # fmt: skip
    aa = ("on", "on2") if "on2" in groups and len(groups) == 3 else ("aa_a", "aa_b")
    for label, (a, b) in (("on-off", ("on", "off")), ("on-on2", aa)):
        diffs: dict[str, Any] = {}
        if one:
            x, y = arm(one["p50_us"], a), arm(one["p50_us"], b)
            diffs["p50_added_us"] = summarize([p - q for p, q in zip(x, y, strict=True)])
            x, y = arm(one["front_us"], a), arm(one["front_us"], b)
            diffs["front_added_us_one"] = summarize([p - q for p, q in zip(x, y, strict=True)])
        if many:
            x, y = arm(many["rps"], a), arm(many["rps"], b)
            diffs["rps_change_pct"] = summarize(
                [100 * (p / q - 1) for p, q in zip(x, y, strict=True)]
            )
            x, y = arm(many["front_us"], a), arm(many["front_us"], b)
            diffs["front_added_us_many"] = summarize([p - q for p, q in zip(x, y, strict=True)])
        out[label] = diffs
    return out


def _shown(got: dict[str, Any]) -> dict[str, Any]:
    """A rounds report without its raw figures and per-round values (for the console)."""
    out: dict[str, Any] = {}
    for key, value in got.items():
        if key == "raw":
            continue
        if isinstance(value, dict):
            value = {
                k: {kk: vv for kk, vv in v.items() if kk != "values"} if isinstance(v, dict) else v
                for k, v in value.items()
            }
        out[key] = value
    return out


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


# -- the table of docs/operations.md -------------------------------------------------------------

_NAMES = {
    "kserve_json": "KServe REST JSON",
    "tfs_rest": "TF Serving REST",
    "kserve_grpc": "KServe gRPC",
}


P50_GOAL_US = 20.0
"""Issue 16's goals: the added p50 at 1 client at most 20 µs, the loss of req/s at 64
clients at most 3 %."""
LOSS_GOAL_PCT = 3.0


def _interval(got: dict[str, Any], unit: str) -> str:
    return f"{got['median']:+.1f} {unit} [{got['low']:+.1f}, {got['high']:+.1f}]"


def _aa_warning(aa: dict[str, Any], goal: float) -> str:
    """What the A/A interval says about a verdict: nothing when it covers 0 and is narrower
    than the goal; a warning when it leaves out 0 (processes with the same flags differed beyond
    the rounds' spread, so an on/off difference of that size is not the counting's), or when it
    is wider than the goal (the method does not resolve the goal on this machine now: a
    verdict, even "met", may be noise)."""
    notes = []
    if aa["low"] > 0 or aa["high"] < 0:
        notes.append("leaves out 0")
    if aa["high"] - aa["low"] > goal:
        notes.append(f"is wider than the goal ({aa['high'] - aa['low']:.1f} > {goal:g})")
    if not notes:
        return ""
    return f"; but the A/A interval [{aa['low']:+.1f}, {aa['high']:+.1f}] " + " and ".join(notes)


def table(report: dict[str, Any]) -> str:
    """The issue's figures as a Markdown table, from whatever parts ``report`` holds: per
    protocol, p50 at 1 client and req/s at 64 clients, on and off, what statistics and metrics
    add (median of per-round differences [bootstrap 95 % interval]) and the same for on against
    on (A/A); then the CPU per request; then the verdicts against the goals."""
    rows = [
        "| measure | protocol | on | off | on - off, median [95 % interval] | on - on2 (A/A) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for protocol, got in report.get("ab", {}).items():
        name, on, off = _NAMES[protocol], got["on"], got["off"]
        diff, aa = got["on-off"], got["on-on2"]
        if "p50_added_us" in diff:
            rows += [
                f"| p50 at 1 client ({got['p50_rounds']} rounds of {got['block']}-request "
                f"blocks) | {name} | {on['p50_us']:.1f} µs | {off['p50_us']:.1f} µs "
                f"| **{_interval(diff['p50_added_us'], 'µs')}** "
                f"| {_interval(aa['p50_added_us'], 'µs')} |",
                f"| front-end CPU per request at 1 client | {name} | {on['front_us_one']:.1f} µs "
                f"| {off['front_us_one']:.1f} µs | {_interval(diff['front_added_us_one'], 'µs')} "
                f"| {_interval(aa['front_added_us_one'], 'µs')} |",
            ]
            verdicts.append(
                f"- {name}, added p50 (goal ≤ {P50_GOAL_US:g} µs): "
                + verdict(diff["p50_added_us"], P50_GOAL_US)
                + _aa_warning(aa["p50_added_us"], P50_GOAL_US)
            )
        if "rps_change_pct" in diff:
            rows += [
                f"| req/s at {got['clients']} clients ({got['rate_rounds']} rounds of "
                f"{got['window']:g} s windows) | {name} | {on['rps']:.0f} | {off['rps']:.0f} "
                f"| **{_interval(diff['rps_change_pct'], '%')}** "
                f"| {_interval(aa['rps_change_pct'], '%')} |",
                f"| front-end CPU per request at {got['clients']} clients (front end busy "
                f"{on['front_busy_many']:.0%} / {off['front_busy_many']:.0%} of a core) | {name} "
                f"| {on['front_us_many']:.1f} µs | {off['front_us_many']:.1f} µs "
                f"| {_interval(diff['front_added_us_many'], 'µs')} "
                f"| {_interval(aa['front_added_us_many'], 'µs')} |",
                f"| workers' and load generator's CPU per request at {got['clients']} clients "
                f"| {name} | {on['worker_us_many']:.1f} + {on['client_us_many']:.1f} µs "
                f"| {off['worker_us_many']:.1f} + {off['client_us_many']:.1f} µs | | |",
            ]
            added = diff["front_added_us_many"]["median"]
            front, rest = off["front_us_many"], off["worker_us_many"]
            rows.append(
                f"| req/s loss implied by the front end's added CPU at {got['clients']} clients: "
                f"front end the bottleneck (added / front) ; the 2 cores the bottleneck, "
                f"without / with the generator's CPU | {name} | | "
                f"| {100 * added / (front + added):+.1f} % ; "
                f"{100 * added / (front + rest + added):+.1f} % / "
                f"{100 * added / (front + rest + off['client_us_many'] + added):+.1f} % | |"
            )
            verdicts.append(
                f"- {name}, req/s loss (goal ≤ {LOSS_GOAL_PCT:g} %): "
                + verdict(diff["rps_change_pct"], LOSS_GOAL_PCT, worse="lower")
                + _aa_warning(aa["rps_change_pct"], LOSS_GOAL_PCT)
            )
    for part in report.get("cpu_time", []):
        rows.append(
            f"| front-end CPU per request, in process, {part['in_flight']} in flight "
            f"({part['rounds']} rotated rounds of {part['batch']}) | {_NAMES[part['protocol']]} "
            f"| {part['cpu_us_per_request_on']:.1f} µs | {part['cpu_us_per_request_off']:.1f} µs "
            f"| {_interval(part['added'], 'µs')} | {_interval(part['added_aa'], 'µs')} |"
        )
    for part in report.get("callgrind", []):
        rows.append(
            f"| instructions per request, in process, {part['in_flight']} in flight (callgrind) "
            f"| {_NAMES[part['protocol']]} "
            f"| {part['instructions_per_request_on']:,.0f} "
            f"| {part['instructions_per_request_off']:,.0f} "
            f"| {part['added_instructions_per_request']:+,.0f} ({part['added_pct']:.1f} %) | |"
        )
    text = "\n".join(rows) + "\n"
    if verdicts:
        text += "\n" + "\n".join(verdicts) + "\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--p50-rounds", type=int, default=0,
        help="rounds of one 1-client block per server (0: skip; a multiple of 3 rotates evenly)",
    )  # fmt: skip
    parser.add_argument("--block", type=int, default=100, help="requests per 1-client block")
    parser.add_argument(
        "--rate-rounds", type=int, default=0,
        help="rounds of one 64-client window per server (0: skip)",
    )  # fmt: skip
    parser.add_argument("--window", type=float, default=0.4, help="64-client window, seconds")
    parser.add_argument("--ramp", type=float, default=0.05, help="uncounted start of a window")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--per-arm", type=int, default=2,
        help="server processes per arm (1: on, off, on2; 2: on, off, on2, off2; ...)",
    )  # fmt: skip
    parser.add_argument("--protocols", default=",".join(IN_PROCESS))
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--cpu-rounds", type=int, default=0, help="0: skip the in-process part")
    parser.add_argument(
        "--in-flight", default="1,64", help="in-process calls at once, comma-separated"
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument("--table", type=Path, help="also write the Markdown table here")
    parser.add_argument("--inprocess", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--protocol", default="kserve_json", help=argparse.SUPPRESS)
    parser.add_argument("--metrics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess is not None:
        _inprocess(args.inprocess, args.metrics, args.protocol, int(args.in_flight))
        return
    protocols = tuple(args.protocols.split(","))
    if args.p50_rounds or args.rate_rounds:
        # Quiet box: 1-client blocks about 0.65 ms a request; a window with its ramp, drain
        # and CPU readings about 0.1 s more than its length; servers start in about 20 s.
        per_protocol = (
            2
            * args.per_arm
            * (
                args.p50_rounds * (args.block * 0.00065 + 0.005)
                + args.rate_rounds * (args.ramp + args.window + 0.05)
            )
        )
        minutes = (len(protocols) * (per_protocol + 5) + 20) / 60
        print(f"wall-clock part: about {minutes:.1f} minutes", flush=True)
    report: dict[str, Any] = {"git": _git(), "load_average_at_start": os.getloadavg()}
    if args.cpu_rounds:
        report["cpu_time"] = [
            cpu_time(args.cpu_rounds, 640, p, int(n))
            for n in args.in_flight.split(",")
            for p in protocols
        ]
        for part in report["cpu_time"]:
            print(json.dumps({k: v for k, v in part.items() if k != "raw"}), flush=True)
    if args.callgrind:
        report["callgrind"] = [
            callgrind(128, 640, p, int(n)) for n in args.in_flight.split(",") for p in protocols
        ]
    if args.p50_rounds or args.rate_rounds:
        report["ab"] = ab_part(
            protocols, p50_rounds=args.p50_rounds, block=args.block,
            rate_rounds=args.rate_rounds, window=args.window, ramp=args.ramp,
            clients=args.clients, per_arm=args.per_arm,
        )  # fmt: skip
    report["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
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
