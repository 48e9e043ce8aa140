"""The REST adapters' own work per request, in process: no socket, no worker, no load generator.

``LeanInference.respond`` (what the server's HTTP entry calls for a hot call, with the body
whole) runs one request after another on an event loop over an in-process data plane whose one
model (the tiny benchmark model's signature: ``x`` FP32 [-1, 64] -> ``y`` FP32 [-1, 10])
answers at once: the path, the deadline, the body's checks, decoding, the data plane's own
checks, encoding the answer. Two figures:

* CPU per request (``time.thread_time``; the least and the median of ``--batches`` batches);
* with ``--callgrind``, instructions per request: the requests run inside ``functools.reduce``
  (a C function no other code here calls) and valgrind collects only inside it
  (``--toggle-collect=functools_reduce``): load-independent, for A/B of two trees.

With ``--worker`` the model is the tiny benchmark MLP served by a real worker process
(``WorkerLoader``: the supervisor, the worker client, the frames both ways), so the figures
include the front end's side of the worker hop (on the server's event loop, uvloop where it is
installed); callgrind counts the front end only (it does
not follow the worker process), and the time the front end waits for the worker is idle, not
CPU (``thread_time``) or instructions. ``--deadline-ms`` gives every request a deadline, as the
server does (its default: 60000; 0, the default here and all before session 12: none, so no
deadline timer per request).

    PYTHONPATH=src python bench/adapter_cost.py [--protocol tfs_rest|kserve_json] [--worker]
        [--deadline-ms 60000] [--callgrind]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

PROTOCOLS = ("tfs_rest", "kserve_json")


def _dataplane(servable: object = None, deadline_ms: int = 0) -> object:
    """A started data plane serving ``tiny`` version 1 from ``servable`` (None: an in-process
    stand-in that answers at once), every request with a deadline of ``deadline_ms`` (0: none)."""
    from modelyard.config.schema import Platform
    from modelyard.deadlines import DeadlinePolicy
    from modelyard.ids import VersionKey
    from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
    from modelyard.lifecycle.states import ModelState
    from modelyard.server.dataplane import DataPlane
    from modelyard.tensors import DataType, Signature, TensorSpec

    signature = Signature(
        (TensorSpec("x", DataType.FP32, (-1, 64)),), (TensorSpec("y", DataType.FP32, (-1, 10)),)
    )
    weights = np.full((64, 10), 0.5, dtype=np.float32)

    class Servable:
        @property
        def signature(self) -> Signature:
            return signature

        @property
        def signatures(self) -> Mapping[str, Signature]:
            return {"serving_default": signature}

        async def infer(
            self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
        ) -> dict[str, np.ndarray]:
            return {"y": inputs["x"] @ weights}

        async def close(self) -> None:
            pass

    registry = ModelRegistry()
    entry = VersionEntry(VersionKey("tiny", 1), Platform.ONNX, signature=signature)
    entry.transition(ModelState.LOADING)
    entry.replicas = [Replica(Servable() if servable is None else servable, "cpu")]  # type: ignore[arg-type]
    entry.transition(ModelState.AVAILABLE)
    registry.add(entry)
    dataplane = DataPlane(registry, deadline_policy=DeadlinePolicy(deadline_ms))
    dataplane.started = True
    return dataplane


def _request(protocol: str) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    import orjson

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    if protocol == "tfs_rest":
        body = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        path = "/v1/models/tiny:predict"
    else:
        tensor = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x.ravel()}
        body = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)
        path = "/v2/models/tiny/infer"
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return path, body, headers


async def _worker_servable(tmp: Path) -> tuple[object, object]:
    """The tiny benchmark MLP loaded in a worker process: (its servable, the loader to close)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_models import TINY, write_mlp

    from modelyard.config.schema import ModelConfig, Platform
    from modelyard.devices import DeviceTarget
    from modelyard.ids import VersionKey
    from modelyard.lifecycle.controller import LoadRequest
    from modelyard.workers.loader import WorkerLoader

    version_dir = tmp / "tiny" / "1"
    write_mlp(TINY, version_dir)
    request = LoadRequest(
        VersionKey("tiny", 1),
        version_dir,
        Platform.ONNX,
        DeviceTarget.cpu(),
        None,
        ModelConfig(name="tiny", base_path=version_dir.parent),
        "cpu0",
    )
    loader = WorkerLoader()
    return await loader.load(request), loader


def _run(
    protocol: str, requests: int, batches: int, warm: int, worker: bool, deadline_ms: int
) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="adapter-cost-") as tmp:
        where = Path(tmp) if worker else None
        return _run_in(protocol, requests, batches, warm, where, deadline_ms)


def _run_in(
    protocol: str,
    requests: int,
    batches: int,
    warm: int,
    worker_dir: Path | None,
    deadline_ms: int,
) -> list[float]:
    from starlette.applications import Starlette

    from modelyard.server.http.lean import LeanInference, hot_lane

    os.environ.setdefault("MODELYARD_INTRA_OP_THREADS", "1")
    if worker_dir is not None:  # the server's loop (uvloop): its transport writes to the worker
        from modelyard.server.eventloop import new_event_loop

        loop = new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    servable = loader = None
    if worker_dir is not None:
        servable, loader = loop.run_until_complete(_worker_servable(worker_dir))
    lean = LeanInference(
        Starlette(),
        _dataplane(servable, deadline_ms),  # type: ignore[arg-type]
        max_request_bytes=64 << 20,
        observer=None,
    )
    path, body, headers = _request(protocol)
    lane = hot_lane(path)
    assert lane is not None

    async def serve(count: int) -> None:
        for _ in range(count):
            status, _, answer = await lean.respond(lane, path, headers, None, body)
            if status != 200:
                raise SystemExit(f"answer {status}: {answer!r}")

    try:
        loop.run_until_complete(serve(warm))
        if os.environ.get("ADAPTER_COST_COLLECT"):  # under callgrind: collect only inside reduce
            functools.reduce(lambda _, __: loop.run_until_complete(serve(requests)), range(1), None)
            return []
        out = []
        for _ in range(batches):
            began = time.thread_time()
            loop.run_until_complete(serve(requests))
            out.append((time.thread_time() - began) / requests * 1e6)
        return out
    finally:
        if loader is not None:
            loop.run_until_complete(loader.aclose())  # type: ignore[attr-defined]
        loop.close()


def _callgrind(protocol: str, requests: int, warm: int, extra: list[str]) -> float:
    """Instructions per request, under valgrind."""
    with tempfile.TemporaryDirectory(prefix="adapter-cg-") as tmp:
        counts = []
        for n in (0, requests):
            out = Path(tmp) / f"cg.{n}"
            env = {**os.environ, "ADAPTER_COST_COLLECT": "1", "PYTHONHASHSEED": "0"}
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                 "--toggle-collect=functools_reduce", f"--callgrind-out-file={out}",
                 sys.executable, __file__, "--protocol", protocol, "--requests", str(n),
                 "--warm", str(warm), "--batches", "1", *extra],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            text = out.read_text()
            match = re.search(r"^summary: (\d+)", text, re.M) or re.search(
                r"^totals: (\d+)", text, re.M
            )
            assert match is not None
            counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="tfs_rest")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--warm", type=int, default=300)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--worker", action="store_true", help="serve from a worker process")
    parser.add_argument(
        "--deadline-ms",
        type=int,
        default=0,
        help="every request's deadline (0: none, as before session 12; the server's default "
        "is 60000)",
    )
    args = parser.parse_args()
    if args.callgrind:
        extra = [f"--deadline-ms={args.deadline_ms}", *(["--worker"] if args.worker else [])]
        per = _callgrind(args.protocol, args.requests, args.warm, extra)
        print(f"{args.protocol}: {per / 1e3:.1f}k instructions per request")
        return
    got = _run(args.protocol, args.requests, args.batches, args.warm, args.worker, args.deadline_ms)
    if got:
        print(
            f"{args.protocol}: least {min(got):.1f} us, median {statistics.median(got):.1f} us "
            "per request (CPU)"
        )


if __name__ == "__main__":
    main()
