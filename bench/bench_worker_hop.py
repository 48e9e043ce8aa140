"""What the worker process hop costs: a tiny model called in-process vs. through a worker.

Model: an ONNX MLP 64 -> 256 -> 256 -> 10 (ReLU), one row per call, FP32. Three ways, measured
in one run on the same machine:

- ``direct``: ``LoadedModel.predict`` in a loop on one thread (no asyncio, no threads: the floor)
- ``local``: ``LocalServable.infer`` (what ``Server(loader=InProcessLoader())`` serves through:
  asyncio + a thread pool)
- ``worker``: ``WorkerServable.infer`` from ``WorkerLoader`` (asyncio -> socketpair -> worker
  process -> its inference pool -> back), what ``Server`` serves through by default

Latency: sequential calls (one outstanding) for ``--seconds``, p50 and p99. Throughput: calls/s
with ``--concurrency`` calls outstanding (direct: one thread, so its throughput is 1/mean).

    .venv/bin/python bench/bench_worker_hop.py [--seconds 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from modelyard.backends import get_backend
from modelyard.config.schema import ModelConfig, Platform
from modelyard.devices import DeviceTarget
from modelyard.ids import VersionKey
from modelyard.lifecycle.controller import InProcessLoader, LoadRequest
from modelyard.workers.loader import WorkerLoader

SIZES = (64, 256, 256, 10)


def write_mlp(version_dir: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
        inits.append(
            numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"W{i}")
        )
        inits.append(numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        out = "y" if i == len(SIZES) - 2 else f"h{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}" if out != "y" else "y"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SIZES[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SIZES[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    version_dir.mkdir(parents=True, exist_ok=True)
    save(model, str(version_dir / "model.onnx"))


def environment() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; {cpu}, "
        f"{os.cpu_count()} cores ({affinity} usable); Python {platform.python_version()}, "
        f"torch {version('torch')}, onnxruntime {version('onnxruntime')}, numpy {version('numpy')}"
    )


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return (
        statistics.median(ordered) * 1e6,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
    )


def bench_direct(version_dir: Path, x: np.ndarray, seconds: float) -> tuple[float, float, float]:
    model = get_backend(Platform.ONNX).load(version_dir, "cpu", None)
    inputs = {"x": x}
    for _ in range(200):
        model.predict(inputs)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        model.predict(inputs)
        times.append(time.perf_counter() - t0)
    model.unload()
    p50, p99 = percentiles(times)
    return p50, p99, len(times) / sum(times)


async def bench_async(
    call: Callable[[], Awaitable[object]], seconds: float, concurrency: int
) -> tuple[float, float, float]:
    for _ in range(200):
        await call()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    p50, p99 = percentiles(times)
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return p50, p99, done / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> None:
    os.environ.setdefault("MODELYARD_INTRA_OP_THREADS", "1")  # same session setting everywhere
    with tempfile.TemporaryDirectory() as tmp:
        version_dir = Path(tmp) / "mlp" / "1"
        write_mlp(version_dir)
        x = np.random.default_rng(1).standard_normal((1, SIZES[0])).astype(np.float32)
        request = LoadRequest(
            VersionKey("mlp", 1),
            version_dir,
            Platform.ONNX,
            DeviceTarget.cpu(),
            None,
            ModelConfig(name="mlp", base_path=version_dir.parent),
            "bench0",
        )
        rows = [("direct (LoadedModel.predict)", bench_direct(version_dir, x, args.seconds))]
        in_process = InProcessLoader()
        local = await in_process.load(request)
        rows.append(
            (
                "local (LocalServable.infer)",
                await bench_async(lambda: local.infer({"x": x}), args.seconds, args.concurrency),
            )
        )
        await local.close()
        in_process.shutdown()
        workers = WorkerLoader()
        try:
            remote = await workers.load(request)
            rows.append(
                (
                    "worker (WorkerServable.infer)",
                    await bench_async(
                        lambda: remote.infer({"x": x}), args.seconds, args.concurrency
                    ),
                )
            )
        finally:
            await workers.aclose()
    print(environment())
    print(f"model: ONNX MLP {'-'.join(map(str, SIZES))}, 1 row FP32; {args.seconds:g} s per figure")
    print(f"{'path':32} {'p50 µs':>9} {'p99 µs':>9} {'calls/s':>10}")
    for name, (p50, p99, rate) in rows:
        print(f"{name:32} {p50:9.1f} {p99:9.1f} {rate:10.0f}")
    over_direct = rows[2][1][0] - rows[0][1][0]
    over_local = rows[2][1][0] - rows[1][1][0]
    print(
        f"worker hop adds {over_direct:.0f} µs at p50 over direct, {over_local:.0f} µs over local"
    )
    print(f"(throughput with {args.concurrency} calls outstanding; direct is one thread)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
