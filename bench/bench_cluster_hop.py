"""What a worker on a Ray node costs over a local worker, and Ray's object path vs our frames.

A local Ray cluster (one head node on 127.0.0.1, small object store, no dashboard) and a tiny
ONNX model (``x`` INT64 -> ``x * 2 + 1``). Three ways to call it, in one run:

- ``local``: ``WorkerLoader`` with the local launcher (a child process over a Unix socketpair),
  what ``modelyard serve`` uses without a cluster;
- ``ray-frames``: ``WorkerLoader`` with ``RayLauncher``: the same worker, started by a Ray actor
  on the node, spoken to in the same frames over TCP (what modelyard uses on a cluster);
- ``ray-objects``: the alternative transport: a Ray actor holding the same ONNX Runtime session,
  each call an actor method with the numpy array as argument and result (Ray's object path:
  small objects inline in the RPC, large ones through the object store).

Latency: sequential calls (one outstanding) for ``--seconds``, p50 and p99. Throughput: calls/s
with ``--concurrency`` calls outstanding. Two payloads: 1 x 3 INT64 (24 bytes) and 256 x 512
INT64 (1 MiB).

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python bench/bench_cluster_hop.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.cluster.connect import NAMESPACE
from modelyard.cluster.launcher import RayLauncher
from modelyard.config.schema import ModelConfig, Platform
from modelyard.devices import DeviceTarget
from modelyard.ids import VersionKey
from modelyard.lifecycle.controller import LoadRequest
from modelyard.testing.models import write_onnx_int64_affine
from modelyard.workers.loader import WorkerLoader

Call = Callable[[np.ndarray], Awaitable[np.ndarray]]


class OrtActor:
    """The ``ray-objects`` way: the model in the actor, arrays as method arguments."""

    def __init__(self, path: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(["y"], {"x": x})[0])


async def measure(call: Call, x: np.ndarray, seconds: float, concurrency: int) -> dict[str, float]:
    want = x * 2 + 1
    for _ in range(20):  # warm up
        assert np.array_equal(await call(x), want)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        began = time.perf_counter()
        await call(x)
        latencies.append(time.perf_counter() - began)
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call(x)
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    took = time.perf_counter() - began
    latencies.sort()
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "per_s": done / took,
    }


async def worker_call(loader: WorkerLoader, version_dir: Path, device: str) -> Call:
    key = VersionKey("affine", 1)
    config = ModelConfig(name="affine", base_path=version_dir.parent)
    request = LoadRequest(key, version_dir, Platform.ONNX, DeviceTarget.cpu(), None, config, device)
    servable = await loader.load(request)

    async def call(x: np.ndarray) -> np.ndarray:
        return (await servable.infer({"x": x}))["y"]

    return call


async def run(args: argparse.Namespace) -> list[tuple[str, str, dict[str, float]]]:
    import ray
    from ray.cluster_utils import Cluster

    folder = Path(tempfile.mkdtemp(prefix="cluster-hop-"))
    version_dir = folder / "affine" / "1"
    write_onnx_int64_affine(version_dir, scale=2, offset=1)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "node_ip_address": "127.0.0.1",
            "object_store_memory": 80 * 2**20,
            "num_cpus": 2,
            "include_dashboard": False,
            "resources": {"bench": 1},
        },
    )
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    rows: list[tuple[str, str, dict[str, float]]] = []
    local = WorkerLoader(infer_threads=4)
    remote = WorkerLoader(infer_threads=4, launcher=RayLauncher(ray, {"d": "bench"}))
    try:
        ways: dict[str, Call] = {
            "local": await worker_call(local, version_dir, "l"),
            "ray-frames": await worker_call(remote, version_dir, "d"),
        }
        actor: Any = (
            ray.remote(OrtActor)
            .options(num_cpus=0, max_concurrency=8)
            .remote(str(version_dir / "model.onnx"))
        )

        async def objects(x: np.ndarray) -> np.ndarray:
            return np.asarray(await actor.infer.remote(x))

        ways["ray-objects"] = objects
        payloads = {
            "1x3 (24 B)": np.array([[1, 2, 3]], dtype=np.int64),
            "256x512 (1 MiB)": np.arange(256 * 512, dtype=np.int64).reshape(256, 512),
        }
        for payload, x in payloads.items():
            for way, call in ways.items():
                rows.append((payload, way, await measure(call, x, args.seconds, args.concurrency)))
    finally:
        await local.aclose()
        await remote.aclose()
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no traffic beyond loopback
    os.environ.setdefault("MODELYARD_INTRA_OP_THREADS", "1")
    rows = asyncio.run(run(args))
    print(f"| payload | way | p50 (1 client) | p99 | calls/s at {args.concurrency} clients |")
    print("|---|---|---|---|---|")
    for payload, way, m in rows:
        print(f"| {payload} | {way} | {m['p50_us']:.0f} µs | {m['p99_us']:.0f} µs | "
              f"{m['per_s']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
