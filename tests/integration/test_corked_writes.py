"""Many calls in flight share the front end's writes (``h2answer`` and ``WorkerProcess`` cork
what one turn of the event loop writes), and every call still gets its own right answer.

Counted with the kernel's own tally of write system calls of the server's event-loop thread
(``/proc/self/task/<tid>/io``, ``syscw``): without the cork each call costs at least two (its
INFER frame to the worker, its answer to the client); the clients here run on other threads,
so their writes are not in that tally.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.testing.models import BuiltModel
from modelyard.testing.server import RunningServer

Models = dict[str, dict[int, BuiltModel]]
IN_FLIGHT = 64
WAVES = 5

pytestmark = pytest.mark.skipif(
    not Path(f"/proc/self/task/{threading.get_native_id()}/io").exists(),
    reason="needs Linux's per-thread I/O counters (/proc/self/task/<tid>/io)",
)


async def _native_id() -> int:
    return threading.get_native_id()


def _writes(tid: int) -> int:
    """Write system calls the thread ``tid`` of this process has made so far."""
    for line in Path(f"/proc/self/task/{tid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw line")


def test_grpc_calls_in_flight_on_one_connection_share_writes(
    server: RunningServer, models: Models
) -> None:
    built = models["linear"][2]
    x = np.asarray(built.example["x"])
    want = built.reference({"x": x})["y"]
    request = pb.ModelInferRequest(model_name="linear", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    tid = server.call(_native_id())

    async def calls() -> tuple[list[pb.ModelInferResponse], int]:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            await infer(request, timeout=30)  # the connection is up before counting
            before = _writes(tid)
            answers: list[pb.ModelInferResponse] = []
            for _ in range(WAVES):
                answers += await asyncio.gather(
                    *(infer(request, timeout=30) for _ in range(IN_FLIGHT))
                )
            return answers, _writes(tid) - before

    answers, writes = asyncio.run(calls())
    assert len(answers) == WAVES * IN_FLIGHT
    for answer in answers:
        got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # Without the cork: at least 2 per call (320 calls: >= 640 writes).
    assert writes < len(answers), f"{writes} writes for {len(answers)} calls"


def test_rest_calls_in_flight_share_the_writes_to_the_worker(
    server: RunningServer, models: Models
) -> None:
    """64 clients, each on its own keep-alive connection, send at once: one answer per
    connection, the INFER frames to the worker shared. The server's loop is held while they
    send (as when they come from other processes faster than one turn: here the clients share
    this process's interpreter with the server's thread), so one turn reads them all."""
    built = models["linear"][2]
    x = np.asarray(built.example["x"])
    want = built.reference({"x": x})["y"]
    host, port = server.rest_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"instances": x.tolist()}).encode()
    request = (
        f"POST /v1/models/linear/versions/2:predict HTTP/1.1\r\nhost: {host}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    tid = server.call(_native_id())
    clients = [socket.create_connection((host, int(port)), timeout=30) for _ in range(IN_FLIGHT)]
    try:
        for client in clients:  # warm: every connection accepted and served once
            client.sendall(request)
        answers = [_answer(client) for client in clients]
        before = 0
        answers = []
        for wave in range(WAVES + 1):  # the first not counted: its calls warm what they use
            if wave == 1:
                before, answers = _writes(tid), []
            held, gate = threading.Event(), threading.Event()
            server.loop.call_soon_threadsafe(_hold, held, gate)
            assert held.wait(30)
            try:
                for client in clients:
                    client.sendall(request)
            finally:
                gate.set()
            answers += [_answer(client) for client in clients]
        writes = _writes(tid) - before
    finally:
        for client in clients:
            client.close()
    assert len(answers) == WAVES * IN_FLIGHT
    for status, answer in answers:
        assert status == 200, answer
        np.testing.assert_allclose(np.array(json.loads(answer)["predictions"]), want, rtol=1e-5)
    # One answer per connection each, plus the INFER frames: 2 per call without the cork.
    assert writes < 1.5 * len(answers), f"{writes} writes for {len(answers)} calls"


def _hold(held: threading.Event, gate: threading.Event) -> None:
    """Run on the server's loop: hold it until ``gate`` is set."""
    held.set()
    gate.wait(30)


def _answer(client: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 answer read off ``client``: its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                  if k.strip().lower() == "content-length")  # fmt: skip
    while len(rest) < length:
        chunk = client.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return int(lines[0].split()[1]), rest
