"""The README's first command, as a user runs it: ``modelyard serve`` with no config.

It must build and serve the demo repository, print a ready-to-paste command for each API, and
those commands (run with the real curl) must return what the models compute in-process. SIGTERM
must then stop it with exit code 0.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from modelyard.backends import detect_platform, get_backend
from modelyard.config import load_config
from modelyard.demo import build_demo_repository
from modelyard.lifecycle.controller import declared_signature
from modelyard.repository import scan_versions
from modelyard.server.grpc.generated import grpc_service_pb2 as pb


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _in_process(cache: Path, model_name: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The latest version of a demo model, loaded and run in this process."""
    config = load_config(build_demo_repository(cache / "demo"))
    model = next(m for m in config.models if m.name == model_name)
    version_dir = model.base_path / str(scan_versions(model.base_path)[-1])
    backend = get_backend(detect_platform(version_dir, model.platform))
    loaded = backend.load(version_dir, "cpu", declared_signature(model))
    try:
        return loaded.predict(inputs)
    finally:
        loaded.unload()


@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="needs curl")
def test_demo_serves_and_its_printed_commands_answer_correctly(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ports_file = tmp_path / "ports.json"
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "modelyard", "serve", "--port", "0", "--rest_api_port", "0"]
    proc = subprocess.Popen(
        [*command, "--ports-file", str(ports_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        ports = _wait_for(
            lambda: ports_file.exists() and json.loads(ports_file.read_text()),
            180,
            "the ports file",
        )
        rest = f"http://127.0.0.1:{ports['rest']}"
        _wait_for(lambda: httpx.get(f"{rest}/v2/health/ready").status_code == 200, 60, "readiness")
        _wait_for(lambda: any("grpcurl" in line for line in lines), 30, "the banner")
        output = "".join(lines)
        assert "127.0.0.1" in output
        curls = [line.strip() for line in lines if line.strip().startswith("curl ")]
        served = {"mlp", "linear", "scripted"}
        assert {c.split("/models/")[1].split(":")[0].split("/")[0] for c in curls} == served
        assert len(curls) == 2 * len(served)  # one per REST API per model

        for curl in curls:
            args = shlex.split(curl)
            body = json.loads(args[args.index("-d") + 1])
            answer = json.loads(subprocess.run(args, capture_output=True, check=True).stdout)
            if "/v1/models/" in curl:
                model = curl.split("/v1/models/")[1].split(":")[0]
                x = np.array(body["instances"], dtype=np.float32)
                expected = _in_process(cache, model, {"x": x})
                (want,) = expected.values()
                np.testing.assert_allclose(np.array(answer["predictions"]), want, rtol=1e-5)
            else:
                model = curl.split("/v2/models/")[1].split("/")[0]
                tensor = body["inputs"][0]
                x = np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                expected = _in_process(cache, model, {tensor["name"]: x})
                (out,) = answer["outputs"]
                want = expected[out["name"]]
                assert out["shape"] == list(want.shape)
                np.testing.assert_allclose(np.array(out["data"]), want.ravel(), rtol=1e-5)

        # The gRPC line: grpcurl is not installed here, so send the very JSON it would send,
        # parsed into a real ModelInferRequest, over a real channel.
        (grpcurl,) = [line.strip() for line in lines if line.strip().startswith("grpcurl ")]
        args = shlex.split(grpcurl)
        assert args[-1] == "inference.GRPCInferenceService/ModelInfer"
        assert args[-2] == f"127.0.0.1:{ports['grpc']}"
        request = json_format.ParseDict(
            json.loads(args[args.index("-d") + 1]), pb.ModelInferRequest()
        )
        with grpc.insecure_channel(args[-2]) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            reply = infer(request, timeout=30)
        tensor = request.inputs[0]
        x = np.array(tensor.contents.fp32_contents, dtype=np.float32).reshape(tensor.shape)
        expected = _in_process(cache, request.model_name, {tensor.name: x})
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
            got = np.frombuffer(raw, dtype=np.float32).reshape(out.shape)
            np.testing.assert_allclose(got, expected[out.name], rtol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            reader.join(10)
    assert code == 0, "".join(lines)[-3000:]
