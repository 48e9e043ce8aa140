"""The batching benchmark on the check's device: batching on vs off, and the tiny model's
added latency.

The models are ``make bench``'s tiny and medium MLPs (``bench_models``: their layer widths,
rows per request and example inputs), written here as torch.export programs (ONNX Runtime on
the GPU machine is a CPU build, so ONNX would not measure the GPU), each served twice, unbatched
and as ``<name>_batched`` with ``make bench``'s batching options (``run_all.BATCHING``). The
load is ``bench/loadgen.py`` in its own process, closed loop, TF Serving REST (the protocol of
the earlier 1.96x on CPU) and KServe v2 gRPC:

- medium at 64 clients: rows/s batched over rows/s unbatched (goal >= 2.5x);
- tiny at 1 client: the served p50 minus the in-process p50 of the same program on the same
  device (``added p50``), unbatched and batched.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_models import MEDIUM, TINY, BenchModel
from gpu_check_models import BuildJob, MlpShape, build_all, load_expected
from gpu_check_serve import Served, serve_env, write_config
from protocols import GRPC_METHOD, payload
from run_all import BATCHING

BENCH = Path(__file__).resolve().parent
GOAL_BATCHING_GAIN = 2.5


def run(profile: Any, work: Path, raw: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"checks": {}, "figures": {}, "errors": []}
    checks, figures = result["checks"], result["figures"]
    medium = BenchModel(MEDIUM.name, profile.medium_layers, MEDIUM.rows_per_request)
    chosen = (TINY, medium)
    root = work / "bench"
    for model in chosen:
        job = BuildJob(model.name, str(root / model.name / "1"), 7, str(root / f"{model.name}.npz"))
        build_all([job], MlpShape(model.layers), profile.reference_device, model.rows_per_request)
        (root / f"{model.name}_batched").symlink_to(root / model.name)
    figures["medium_layers"] = list(medium.layers)

    # The in-process floor: the same programs through modelyard's backend, on the same device.
    floors = {m.name: _floor(root / m.name / "1", m, profile) for m in chosen}
    figures["floor"] = floors

    device = {"name": "dev0", "kind": profile.device_kind, "index": 0}
    models = []
    for model in chosen:
        models.append({"name": model.name, "base_path": str(root / model.name)})
        models.append(
            {
                "name": f"{model.name}_batched",
                "base_path": str(root / f"{model.name}_batched"),
                "batching": BATCHING[model.name],
            }
        )
    config = write_config(work / "bench.yaml", [device], models)
    figures["batching_options"] = {m.name: BATCHING[m.name] for m in chosen}
    runs: dict[str, Any] = {}
    with Served(config, work, raw / "batching_serve.log", serve_env(work), 300) as served:
        served.wait_available([m["name"] for m in models], 300)
        for model in chosen:
            x, want = load_expected(root / f"{model.name}.npz")
            for variant in (model.name, f"{model.name}_batched"):
                got = served.infer(variant, x)
                checks[f"{variant}_answers_equal"] = bool(
                    np.allclose(got, want, rtol=1e-3, atol=1e-4)
                )
        points = [
            (medium, "tfs_rest", 64, profile.bench_seconds * 2),
            (medium, "kserve_grpc", 64, profile.bench_seconds * 2),
            (TINY, "tfs_rest", 1, profile.bench_seconds),
        ]
        for model, protocol, clients, seconds in points:
            port = served.grpc_port if protocol == "kserve_grpc" else served.rest_port
            for variant in (model.name, f"{model.name}_batched"):
                body = payload(protocol, variant, model.example())
                before = _cpu_seconds(served.process.pid)
                point = _closed(protocol, port, body, seconds, clients)
                point["cpu_s"] = _cpu_used(before, _cpu_seconds(served.process.pid))
                point["rows_per_s"] = round(point["req_per_s"] * model.rows_per_request, 1)
                runs[f"{variant}/{protocol}/c{clients}"] = point
        figures["server_exit_code"] = served.stop()
    figures["runs"] = runs

    for protocol in ("tfs_rest", "kserve_grpc"):
        off = runs[f"{medium.name}/{protocol}/c64"]
        on = runs[f"{medium.name}_batched/{protocol}/c64"]
        gain = on["rows_per_s"] / off["rows_per_s"] if off["rows_per_s"] else 0.0
        figures[f"medium_c64_batching_gain_{protocol}"] = round(gain, 3)
    figures["goal_batching_gain"] = GOAL_BATCHING_GAIN
    checks["medium_batching_gain_meets_goal"] = (
        figures["medium_c64_batching_gain_tfs_rest"] >= GOAL_BATCHING_GAIN
    )
    floor_p50 = floors[TINY.name]["p50_ms_by_rows"][str(TINY.rows_per_request)]
    for variant in (TINY.name, f"{TINY.name}_batched"):
        served_p50 = runs[f"{variant}/tfs_rest/c1"]["p50_ms"]
        figures[f"{variant}_added_p50_ms"] = round(served_p50 - floor_p50, 3)
    return result


def _cpu_seconds(front_end_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the front end, its workers (its child processes,
    summed) and this process's finished children (the load generator)."""
    front_end = psutil.Process(front_end_pid)
    workers = 0.0
    for child in front_end.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        workers += times.user + times.system
    own = front_end.cpu_times()
    load = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "front_end": own.user + own.system,
        "workers": workers,
        "load_generator": load.ru_utime + load.ru_stime,
    }


def _cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each part used during one point: which one was the bottleneck."""
    return {part: round(after[part] - before[part], 2) for part in before}


def _closed(protocol: str, port: int, body: bytes, seconds: float, clients: int) -> dict[str, Any]:
    """One closed-loop point of ``bench/loadgen.py`` (its own process) at ``clients``."""
    spec = {
        "protocol": "grpc" if protocol == "kserve_grpc" else "http",
        "host": "127.0.0.1",
        "port": port,
        "payload_b64": base64.b64encode(body).decode(),
        "grpc_method": GRPC_METHOD,
        "duration_s": seconds,
        "warmup_s": 0.5,
        "concurrencies": [clients],
        "open_rate_fraction": 0.0,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH / "loadgen.py"), f.name],
            capture_output=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr.decode()[-2000:]}")
    (point,) = json.loads(done.stdout)
    latencies = sorted(point["latencies_ms"])
    return {
        "requests": point["requests"],
        "errors": point["errors"],
        "req_per_s": round(point["requests"] / point["elapsed_s"], 1),
        "p50_ms": round(statistics.median(latencies), 3) if latencies else None,
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 3) if latencies else None,
    }


def _floor(version_dir: Path, model: BenchModel, profile: Any) -> dict[str, Any]:
    """Median in-process call time at the request's rows and at the largest batch."""
    from modelyard.backends import get_backend
    from modelyard.config.schema import Platform

    target = "cuda:0" if profile.device_kind == "cuda" else "cpu"
    loaded = get_backend(Platform.TORCH_EXPORT).load(version_dir, target, None)
    out: dict[str, Any] = {"p50_ms_by_rows": {}, "rows_per_s_by_rows": {}}
    try:
        for rows in (model.rows_per_request, BATCHING[model.name]["max_batch_size"]):
            inputs = {"x": model.example(rows)}
            for _ in range(3):
                loaded.predict(inputs)
            times = []
            began = time.perf_counter()
            while (time.perf_counter() - began < profile.floor_seconds or len(times) < 5) and len(
                times
            ) < 10_000:
                t = time.perf_counter()
                loaded.predict(inputs)
                times.append(time.perf_counter() - t)
            out["p50_ms_by_rows"][str(rows)] = round(statistics.median(times) * 1e3, 4)
            out["rows_per_s_by_rows"][str(rows)] = round(rows * len(times) / sum(times), 1)
    finally:
        loaded.unload()
    return out
