"""What statistics and metrics cost per request (issue 16): on (the default, tracing off)
against ``--no-metrics``, measured two ways in one run.

1. In one process, CPU time: the KServe REST path (the real Starlette app, data plane and hooks,
   over an in-process servable that answers at once, so only server code is timed), on and off
   side by side in one event loop, alternating batches; medians of per-request CPU time.
2. End to end, wall clock: two ``modelyard serve`` processes on the same config (the tiny ONNX
   MLP, unbatched), one default and one with ``--no-metrics``, loaded in turn by the load
   generator (``bench/loadgen.py``, its own process): p50 latency at 1 client and requests per
   second at 64 clients, KServe REST JSON and KServe gRPC. The rounds alternate A B / B A so
   drift in the machine's load falls on both; medians over rounds are reported.
3. Instructions per request (``--callgrind``): the same in-process path under valgrind's
   callgrind, for N1 and N2 requests;
   (I(N2) - I(N1)) / (N2 - N1) is the cost of one request without start-up. On a loaded
   machine this is the stable number; wall-clock figures there move by more than the cost.

    python bench/observability_cost.py --rounds 6 --seconds 2 [--callgrind] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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


# -- instructions per request, in one process, under callgrind ----------------------------------


def _build(metrics: bool) -> tuple[Any, Any]:
    """The real REST app over an in-process servable that answers at once, with statistics and
    metrics on or off; and a coroutine function that sends it one KServe REST inference call."""
    from modelyard.config.schema import Platform
    from modelyard.ids import VersionKey
    from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
    from modelyard.lifecycle.states import ModelState
    from modelyard.metrics import ServerMetrics
    from modelyard.observability.boundary import Observer
    from modelyard.server.dataplane import DataPlane
    from modelyard.server.http.app import build_app
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
    app = build_app(dataplane, max_request_bytes=1 << 20, observer=observer)
    raw = payload("kserve_json", TINY.name, np.ones((1, TINY.in_features), np.float32))
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = [
        (k.strip().lower().encode(), v.strip().encode())
        for k, v in (line.split(":", 1) for line in head.decode().split("\r\n")[1:])
    ]

    statuses: dict[int, int] = {}

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
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": f"/v2/models/{TINY.name}/infer",
                 "raw_path": b"", "query_string": b"", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}  # fmt: skip
        await app(scope, receive, send)

    def check(requests: int) -> None:
        if statuses != {200: requests}:
            raise SystemExit(f"not every request succeeded: {statuses}")
        counted = server_metrics.book.of(entry.key).success_count if server_metrics else requests
        if counted != requests:
            raise SystemExit("the statistics did not count every request")

    one.check = check  # type: ignore[attr-defined]
    return app, one


def _inprocess(requests: int, metrics: bool) -> None:
    """Drive ``requests`` KServe REST inference calls through the real app, in process."""
    _, one = _build(metrics)

    async def many() -> None:
        for _ in range(requests):
            await one()

    asyncio.run(many())
    one.check(requests)


def cpu_time(rounds: int, batch: int) -> dict[str, Any]:
    """CPU seconds per request of the in-process REST path, on and off, in one process and one
    event loop, alternating batches of ``batch`` requests: process CPU time is far less
    disturbed by other load than wall clock (it still pays for caches others evict)."""
    _, on = _build(True)
    _, off = _build(False)
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
        "rounds": rounds,
        "batch": batch,
        "cpu_us_per_request_on": statistics.median(per["on"]),
        "cpu_us_per_request_off": statistics.median(per["off"]),
        "added_cpu_us_median_of_pairs": statistics.median(deltas),
        "raw": per,
    }


def callgrind(small: int, large: int) -> dict[str, Any]:
    """Instructions per request, on and off: four runs under callgrind, side by side (each is
    single-threaded; on a shared machine running them at once gets them more of it)."""
    runs: dict[tuple[str, int], tuple[subprocess.Popen[str], str]] = {}
    with tempfile.TemporaryDirectory() as out:
        for metrics in (True, False):
            for n in (small, large):
                name = "on" if metrics else "off"
                command = [
                    "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/{name}-{n}.out",
                    PYTHON, __file__, "--inprocess", str(n), *(["--metrics"] if metrics else []),
                ]  # fmt: skip
                process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
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
            print(f"callgrind metrics={name} n={n}: {total:,} instructions", flush=True)
    per = {k: (v[large] - v[small]) / (large - small) for k, v in counts.items()}
    return {
        "requests": [small, large],
        "instructions_per_request_on": per["on"],
        "instructions_per_request_off": per["off"],
        "added_instructions_per_request": per["on"] - per["off"],
        "added_pct": 100 * (per["on"] - per["off"]) / per["off"],
        "raw": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--no-wall-clock", action="store_true")
    parser.add_argument("--paired", action="store_true", help="the paired wall-clock measure")
    parser.add_argument("--cpu-rounds", type=int, default=20, help="0: skip the CPU-time part")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--inprocess", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess is not None:
        _inprocess(args.inprocess, args.metrics)
        return
    report: dict[str, Any] = {}
    if args.cpu_rounds:
        report["cpu_time"] = cpu_time(args.cpu_rounds, 300)
        print(json.dumps({k: v for k, v in report["cpu_time"].items() if k != "raw"}), flush=True)
    if args.callgrind:
        report["callgrind"] = callgrind(100, 600)
    if args.paired:
        report["paired"] = paired(args.rounds, 3000, args.seconds)
    if not args.no_wall_clock:
        report["wall_clock"] = wall_clock(args.rounds, args.seconds)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
