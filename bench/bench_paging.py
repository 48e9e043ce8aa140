"""Paging under a Zipf load: more models than the devices hold (docs/paging.md).

    python bench/bench_paging.py                 # the issue's case: 24 x 64 MiB, 60 s
    python bench/bench_paging.py --seconds 20 --mib 16 --device-mib 128 --host-mib 256

Builds ``--models`` ONNX tables of ``--mib`` MiB, serves them on 2 CPU devices of
``--device-mib`` MiB with ``paging: {host_memory: --host-mib}``, and runs ``--clients`` clients
choosing models Zipf(1.1) for ``--seconds``, every answer compared with the model computed in
process. Meanwhile each worker's RSS is sampled every 100 ms. Prints requests, failures, wrong
answers, page-ins (from host memory / disk), evictions, hit rate, throughput, p50/p99, and
each worker's peak RSS against its device budget plus the framework's baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx

from modelyard.testing.models import write_config
from modelyard.testing.paging import framework_baseline_bytes, run_zipf, write_onnx_table
from modelyard.testing.server import serving

MiB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--mib", type=float, default=64.0)
    parser.add_argument("--device-mib", type=int, default=512)
    parser.add_argument("--host-mib", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MODELYARD_INTRA_OP_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-paging-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        built = {f"m{i:02d}": write_onnx_table(root / f"m{i:02d}" / "1", args.mib, seed=i)
                 for i in range(args.models)}  # fmt: skip
        build_s = time.monotonic() - started
        config = write_config(
            root / "paging.yaml",
            [{"name": n, "base_path": n, "platform": "onnx"} for n in built],
            devices=[
                {"name": f"sim{d}", "kind": "cpu", "memory": f"{args.device_mib}MiB"}
                for d in range(2)
            ],
            paging={"host_memory": f"{args.host_mib}MiB", "max_wait_ms": 30000},
        )
        baseline = framework_baseline_bytes()
        started = time.monotonic()
        with serving(config, poll_interval_s=0) as server:
            start_s = time.monotonic() - started
            url = server.rest_url
            status = httpx.get(f"{url}/modelyard/v1/status", timeout=30).json()
            pids = [d["pid"] for d in status["devices"]]
            before = status["paging"]
            run = run_zipf(url, built, clients=args.clients, seconds=args.seconds, s=args.zipf,
                           worker_pids=pids)  # fmt: skip
            after = httpx.get(f"{url}/modelyard/v1/status", timeout=30).json()["paging"]
        versions = after["versions"]
        page_ins = after["page_ins"] - before["page_ins"]
        from_host = sum(v["page_ins_from_host"] for v in versions) - sum(
            v["page_ins_from_host"] for v in before["versions"]
        )
        hits = sum(v["hits"] for v in versions) - sum(v["hits"] for v in before["versions"])
        misses = sum(v["misses"] for v in versions) - sum(v["misses"] for v in before["versions"])
        seconds_in = sum(v["page_in_seconds"] for v in versions) - sum(
            v["page_in_seconds"] for v in before["versions"]
        )
        limit = args.device_mib * MiB + baseline
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "models": args.models,
            "model_mib": args.mib,
            "devices": f"2 x {args.device_mib} MiB (CPU)",
            "host_memory_mib": args.host_mib,
            "clients": args.clients,
            "seconds": round(run.seconds, 1),
            "build_s": round(build_s, 1),
            "start_s": round(start_s, 1),
            "requests": run.requests,
            "failed": len(run.failures),
            "wrong": len(run.wrong),
            "throughput_rps": round(run.requests / run.seconds, 1),
            "p50_ms": round(run.percentile(50) * 1000, 1),
            "p99_ms": round(run.percentile(99) * 1000, 1),
            "page_ins": page_ins,
            "page_ins_from_host": from_host,
            "mean_page_in_s": round(seconds_in / page_ins, 3) if page_ins else None,
            "evictions": after["evictions"] - before["evictions"],
            "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
            "baseline_mib": round(baseline / MiB, 1),
            "rss_samples": run.rss_samples,
            "rss_peak_mib": {str(p): round(b / MiB, 1) for p, b in run.rss_peak.items()},
            "rss_limit_mib": round(limit / MiB, 1),
            "rss_within_limit": all(b <= limit for b in run.rss_peak.values()),
            "first_failures": run.failures[:5],
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
