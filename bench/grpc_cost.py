"""CPU per gRPC call of the gRPC port's two servers, with nothing behind them, and of HTTP/1.

Starts ``bench/trivial.py`` endpoints (grpc.aio's server, modelyard's own ``h2grpc`` and the
trivial HTTP/1 one), sends each ``--requests`` calls with h2load at ``--streams`` in flight,
and reports the CPU microseconds the server process spent per call (read from /proc, so time
spent waiting for a CPU on a loaded machine is not counted). Rounds are interleaved and the
median is shown: an A/B back to back.

    PYTHONPATH=src python bench/grpc_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
KINDS = ("grpc", "h2grpc", "http")
BODY = b"\x00" * 64  # a small request, about a tiny model's


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _h2load(kind: str, port: int, requests: int, streams: int, tmp: Path) -> float:
    body = tmp / "body"
    if kind == "http":
        body.write_bytes(BODY)
        url, extra = f"http://127.0.0.1:{port}/", ["--h1"]
    else:
        body.write_bytes(b"\x00" + len(BODY).to_bytes(4, "big") + BODY)
        url = f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"
        extra = ["--header=content-type: application/grpc", "--header=te: trailers"]
    command = ["h2load", f"--requests={requests}", "--clients=1",
               f"--max-concurrent-streams={streams}", f"--data={body}", *extra, url]  # fmt: skip
    began = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if f"{requests} succeeded" not in out.stdout:
        raise RuntimeError(f"h2load against {kind}: {out.stdout[-1500:]}")
    return requests / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="modelyard-grpc-cost-") as tmp:
        for _ in range(args.rounds):
            for kind in KINDS:
                proc = subprocess.Popen(
                    [sys.executable, str(BENCH / "trivial.py"), kind], stdout=subprocess.PIPE
                )
                try:
                    assert proc.stdout is not None
                    port = int(proc.stdout.readline())
                    _h2load(kind, port, 200, args.streams, Path(tmp))  # warm-up
                    ps = psutil.Process(proc.pid)
                    before = _cpu(ps)
                    rate = _h2load(kind, port, args.requests, args.streams, Path(tmp))
                    used = (_cpu(ps) - before) / args.requests * 1e6
                    results[kind].append((used, rate))
                finally:
                    proc.terminate()
                    proc.wait(30)
    print(f"{args.streams} stream(s); server CPU microseconds per call, median of {args.rounds}")
    for kind in KINDS:
        us = statistics.median(r[0] for r in results[kind])
        rate = statistics.median(r[1] for r in results[kind])
        print(f"{kind:8} {us:7.0f} us/call {rate:8.0f} req/s")


if __name__ == "__main__":
    main()
