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

    PYTHONPATH=src python bench/adapter_cost.py [--protocol tfs_rest|kserve_json] [--callgrind]
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


def _dataplane() -> object:
    from modelyard.config.schema import Platform
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
    entry.replicas = [Replica(Servable(), "cpu")]
    entry.transition(ModelState.AVAILABLE)
    registry.add(entry)
    dataplane = DataPlane(registry)
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


def _run(protocol: str, requests: int, batches: int, warm: int) -> list[float]:
    from starlette.applications import Starlette

    from modelyard.server.http.lean import LeanInference, hot_lane

    lean = LeanInference(
        Starlette(),
        _dataplane(),  # type: ignore[arg-type]
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

    loop = asyncio.new_event_loop()
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


def _callgrind(protocol: str, requests: int, warm: int) -> float:
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
                 "--warm", str(warm), "--batches", "1"],
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
    args = parser.parse_args()
    if args.callgrind:
        per = _callgrind(args.protocol, args.requests, args.warm)
        print(f"{args.protocol}: {per / 1e3:.1f}k instructions per request")
        return
    got = _run(args.protocol, args.requests, args.batches, args.warm)
    if got:
        print(
            f"{args.protocol}: least {min(got):.1f} us, median {statistics.median(got):.1f} us "
            "per request (CPU)"
        )


if __name__ == "__main__":
    main()
