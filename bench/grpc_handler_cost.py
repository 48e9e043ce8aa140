"""The gRPC front end's own cost per call, without the worker hop: HTTP/2 frames in, answer out.

A KServe ModelInfer (raw or typed contents) or TF Serving Predict request of the tiny model is fed
to the gRPC port's connection object (``server/grpc/http2.py``) on a uvloop loop, with a fake
transport and a stub data plane that answers at once, so what is measured is the HTTP/2 layer,
``fast.py``, the registered wrappers (gate, malformed-request refusal, counting observer) and the
servicer: everything of a call but the data plane and the worker. Two measures:

    PYTHONPATH=src python bench/grpc_handler_cost.py                 # thread CPU per call
    PYTHONPATH=src python bench/grpc_handler_cost.py --instructions  # under valgrind

``--instructions`` runs this script under valgrind's callgrind with 1,000 and 3,000 calls
(``PYTHONHASHSEED=0``) and prints the difference per call: a count that does not move with the
machine's load (this VM has no hardware counters for ``perf stat``). It takes minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hpack
import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY
from protocols import payload

from modelyard.deadlines import DeadlinePolicy
from modelyard.management.access import Gate
from modelyard.observability.boundary import Observer
from modelyard.server.dataplane import InferResult
from modelyard.server.grpc.fast import FastServer
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.h2wire import DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, frame
from modelyard.server.grpc.http2 import Connection
from modelyard.server.grpc.server import _register, _Registrations
from modelyard.server.grpc.tfcodec import array_to_tensor
from modelyard.server.grpc.tfserving import tfserving_servicers
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as tfs

KSERVE = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
SETTINGS, WINDOW_UPDATE = 4, 8


class _Plane:
    """The data plane's part the servicers use, answering at once (the tiny model's output)."""

    deadlines = DeadlinePolicy()
    _output = np.zeros((1, TINY.layers[-1]), dtype=np.float32)

    async def infer(self, ref: Any, inputs: Any, outputs: Any = None, *a: Any, **k: Any) -> Any:
        return InferResult(ref.name, 1, {"y": self._output})


class _Transport:
    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if key == "peername" else default

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _request(kind: str) -> tuple[str, bytes]:
    x = TINY.example()
    if kind == "raw":
        return KSERVE, payload("kserve_grpc", TINY.name, x)
    if kind == "typed":
        request = pb.ModelInferRequest(model_name=TINY.name)
        tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        return KSERVE, bytes(request.SerializeToString())
    predict = tfs.PredictRequest()
    predict.model_spec.name = TINY.name
    array_to_tensor(x, predict.inputs["x"])
    return PREDICT, bytes(predict.SerializeToString())


async def _calls(kind: str, calls: int) -> float:
    """Thread CPU seconds per call over ``calls`` calls (after 50 to warm up)."""
    plane: Any = _Plane()
    fast = FastServer(64 << 20)
    registrations = _Registrations(fast, Gate(None), Observer(count=lambda call: None))
    _register(plane, registrations, tfserving_servicers(plane), None)  # type: ignore[arg-type]
    connection = Connection(fast, fast.limits, set())
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    window = ((1 << 31) - 1 - 65535).to_bytes(4, "big")
    connection.data_received(PREFACE + frame(SETTINGS, 0, 0) + frame(WINDOW_UPDATE, 0, 0, window))
    method, message = _request(kind)
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
              (b":authority", b"bench"), (b"content-type", b"application/grpc"),
              (b"te", b"trailers")]  # fmt: skip
    encoder = hpack.Encoder()
    first, again = encoder.encode(fields), encoder.encode(fields)  # as a client repeats it
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    stream_id = 1

    async def call() -> None:
        nonlocal stream_id
        block = first if stream_id == 1 else again
        request = frame(HEADERS, END_HEADERS, stream_id, block)
        connection.data_received(request + frame(DATA, END_STREAM, stream_id, body))
        stream_id += 2
        await asyncio.sleep(0)  # the call's task runs
        await asyncio.sleep(0)  # its done callback

    for _ in range(50):
        await call()
    began = time.thread_time()
    for _ in range(calls):
        await call()
    spent = (time.thread_time() - began) / calls
    if fast.running or connection.streams:
        raise RuntimeError("calls did not finish")
    return spent


def _instructions(kind: str) -> float:
    counts = []
    for calls in (1000, 3000):
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   sys.executable, __file__, "--protocol", kind, "--calls", str(calls),
                   "--batches", "1"]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        counts.append(int(re.findall(r"Collected : (\d+)", out.stderr)[-1]))
    return (counts[1] - counts[0]) / 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("raw", "typed", "tfs"), action="append")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=5, help="CPU measure: lowest of these")
    parser.add_argument("--instructions", action="store_true")
    args = parser.parse_args()
    kinds = args.protocol or ["raw", "typed", "tfs"]
    for kind in kinds:
        if args.instructions:
            print(f"{kind:6} {_instructions(kind):10,.0f} instructions per call", flush=True)
            continue
        best = min(uvloop.run(_calls(kind, args.calls)) for _ in range(args.batches))
        print(f"{kind:6} {best * 1e6:7.1f} us of CPU per call (lowest of {args.batches})")


if __name__ == "__main__":
    main()
