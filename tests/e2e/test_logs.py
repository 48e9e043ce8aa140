"""``modelyard serve --log-format json --access-log``: every line on stderr is one JSON object,
and the access log has exactly one line per inference request, any protocol, with what a
log pipeline needs (request id, protocol, model, version, status, latency, bytes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from modelyard.testing.models import model_config, write_config, write_onnx_linear

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")


def _serve(
    tmp_path: Path, config: Path, *flags: str
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard",
            "serve",
            str(config),
            "--port",
            "0",
            "--rest_api_port",
            "0",
            "--ports-file",
            str(ports),
            *flags,
        ],
        env={**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr.log").open("wb"),
    )
    deadline = time.monotonic() + 120
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"modelyard serve did not listen (exit {proc.poll()})")
        time.sleep(0.05)
    return proc, json.loads(ports.read_text())


def test_json_logs_parse_and_the_access_log_has_one_line_per_request(tmp_path: Path) -> None:
    built = write_onnx_linear(tmp_path / "linear" / "1")
    config = write_config(tmp_path / "modelyard.yaml", [model_config("linear", {1: built})])
    proc, ports = _serve(tmp_path, config, "--log-format", "json", "--access-log")
    rest = f"http://127.0.0.1:{ports['rest']}"
    try:
        x = built.example["x"][:2].tolist()
        flat = [v for row in x for v in row]
        good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": flat}]}
        with httpx.Client(base_url=rest, timeout=30) as client:
            assert client.get("/v2/health/ready").status_code == 200  # not an inference call
            assert (
                client.post("/v1/models/linear:predict", json={"instances": x}).status_code == 200
            )
            assert client.post("/v2/models/linear/infer", json=good).status_code == 200
            assert client.post("/v1/models/nope:predict", json={"instances": x}).status_code == 404
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            request = service_pb2.ModelInferRequest(model_name="linear", model_version="1")
            tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
            tensor.contents.fp32_contents.extend(x[0])
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        # Bytes that are no HTTP request: uvicorn's own warning comes out as JSON too.
        with socket.create_connection(("127.0.0.1", ports["rest"]), timeout=10) as raw:
            raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            raw.recv(1024)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (tmp_path / "stderr.log").read_text().splitlines()
    assert lines
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # each line parses
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    assert any(r["logger"].startswith("modelyard") and r["level"] == "INFO" for r in records)
    assert any(r["logger"].startswith("uvicorn") and r["level"] == "WARNING" for r in records)
    access = [r for r in records if r["logger"] == "modelyard.access"]
    seen = [(r["protocol"], r["model"], r["version"], r["status"]) for r in access]
    assert seen == [
        ("tfserving_rest", "linear", "1", "200"),
        ("kserve_rest", "linear", "1", "200"),
        ("tfserving_rest", "nope", "", "404"),
        ("kserve_grpc", "linear", "1", "OK"),
    ]
    for record in access:
        assert record["duration_ms"] > 0
        assert record["bytes_in"] > 0
        assert isinstance(record["request_id"], int)
    assert [r["bytes_out"] > 0 for r in access] == [True, True, True, True]
    assert len({r["request_id"] for r in access}) == len(access)
    assert access[1]["method"] == "POST /v2/models/linear/infer"
    assert access[3]["method"] == "/inference.GRPCInferenceService/ModelInfer"
