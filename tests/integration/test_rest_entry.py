"""The REST server's own entry for inference calls, with a call in flight.

A slow model (``write_torchscript_loop``: a request's ``n`` sets how long it runs) holds a call
in flight while its client leaves or the server stops; real server, real worker process, raw
sockets. What a user notices: a call whose client left is dropped from the queue (it never
runs), and a server told to stop answers the call in flight, then closes its connection.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.testing.models import (
    BuiltModel,
    loop_turns_per_second,
    model_config,
    write_config,
    write_torchscript_loop,
)
from modelyard.testing.server import RunningServer, serving, wait_for

pytest.importorskip("torch")

SLOW_S = 1.5
"""How long one slow call runs."""


def _repository(tmp_path: Path) -> tuple[Path, BuiltModel]:
    slow = write_torchscript_loop(tmp_path / "slow" / "1")
    config = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("slow", {1: slow}, devices=["a"])],
        devices=[{"name": "a", "kind": "cpu", "memory": "2GiB"}],
    )
    return config, slow


def _call(turns: int) -> bytes:
    """A slow KServe call on the wire (HTTP/1.1, keep-alive)."""
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 3.0, 4.0]},
                {"name": "n", "datatype": "INT64", "shape": [1], "data": [turns]},
            ]
        }
    ).encode()
    head = f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _connect(server: RunningServer) -> socket.socket:
    host, port = server.rest_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _report(server: RunningServer) -> dict[str, Any]:
    url = f"{server.rest_url}/modelyard/v1/status/devices/a/report"
    report: dict[str, Any] = httpx.get(url, timeout=10).json()
    return report


def _uvicorn_says_close() -> bool:
    """Whether uvicorn tells a client the connection will close when it closes it after an
    answer (0.53 and later; before, only a client that said ``Connection: close`` is told)."""
    import uvicorn

    major, minor = (int(part) for part in uvicorn.__version__.split(".")[:2])
    return (major, minor) >= (0, 53)


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (30 s at most)."""
    data = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_call_whose_client_leaves_is_dropped_from_the_queue(tmp_path: Path) -> None:
    config, slow = _repository(tmp_path)
    turns = int(SLOW_S * loop_turns_per_second(slow))
    with serving(config) as server:
        cap = _report(server)["execution_slots"]["per_model"]
        busy = [_connect(server) for _ in range(cap)]  # every slot of the model taken
        for sock in busy:
            sock.sendall(_call(turns))
        wait_for(
            f"{cap} slow calls running",
            lambda: _report(server)["execution_slots"]["running"] == cap,
        )
        with _connect(server) as leaving:  # waits for a slot, then its client leaves
            leaving.sendall(_call(turns))
            wait_for("a call queued", lambda: _report(server)["execution_slots"]["queued"] == 1)
        wait_for(
            "the left call withdrawn from the queue",
            lambda: _report(server)["inferences"]["slow"]["cancelled"] == 1,
            within_s=5,
        )
        for sock in busy:  # the others are answered
            with sock:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.3)  # a call that had not been withdrawn would be running by now
        slots = _report(server)["execution_slots"]
        run = _report(server)["inferences"]["slow"]["run"]
    assert slots["running"] == 0
    assert slots["queued"] == 0
    assert run == cap  # the left call never ran


def test_a_stopping_server_answers_the_call_in_flight_then_closes(tmp_path: Path) -> None:
    config, slow = _repository(tmp_path)
    turns = int(SLOW_S * loop_turns_per_second(slow))
    answer: list[bytes] = []
    with serving(config) as server:
        sock = _connect(server)
        reader = threading.Thread(target=lambda: answer.append(_read_to_end(sock)))
        sock.sendall(_call(turns))
        reader.start()
        wait_for(
            "the slow call running", lambda: _report(server)["execution_slots"]["running"] == 1
        )
        # Leaving the block stops the server (5 s of grace) with the call in flight.
    reader.join(30)
    sock.close()
    assert len(answer) == 1
    assert answer[0].startswith(b"HTTP/1.1 200 OK"), answer
    if _uvicorn_says_close():
        assert b"connection: close" in answer[0]
    assert answer[0].endswith(b"}]}")  # the whole answer, then the connection's end
