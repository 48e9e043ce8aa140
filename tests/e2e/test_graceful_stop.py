"""SIGTERM on ``modelyard serve``: readiness turns false at once, a request already in flight
still gets its correct answer, and the server exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelyard.testing.models import model_config, write_config, write_onnx_linear

BATCH_WAIT_S = 1.5


def _not_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code != 200
    except httpx.TransportError:  # the listener is closed: not ready either
        return True


def _serve(tmp_path: Path, config: Path, **popen: Any) -> tuple[subprocess.Popen[bytes], str]:
    """``modelyard serve CONFIG`` on free ports; the process and its REST URL once it listens."""
    ports = tmp_path / "ports.json"
    command = [sys.executable, "-m", "modelyard", "serve", str(config), "--port", "0"]
    popen.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(
        [*command, "--rest_api_port", "0", "--ports-file", str(ports)],
        env={**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.DEVNULL,
        **popen,
    )
    deadline = time.monotonic() + 120
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"modelyard serve did not listen (exit {proc.poll()})")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    built = write_onnx_linear(tmp_path / "slow" / "1", seed=3)
    # A lone request waits the whole batch timeout in the batcher: in flight for 1.5 s.
    batching = {"max_batch_size": 64, "batch_timeout_micros": int(BATCH_WAIT_S * 1e6)}
    config = write_config(
        tmp_path / "modelyard.yaml", [model_config("slow", {1: built}, batching=batching)]
    )
    proc, url = _serve(tmp_path, config)
    try:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200

        x = built.example["x"][:1]
        answer: dict[str, httpx.Response] = {}

        def in_flight() -> None:
            answer["r"] = httpx.post(
                f"{url}/v1/models/slow:predict", json={"instances": x.tolist()}, timeout=30
            )

        sender = threading.Thread(target=in_flight)
        sender.start()
        time.sleep(BATCH_WAIT_S / 3)  # the request is queued in the batcher now
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while not _not_ready(url):
            assert time.monotonic() - signalled < 0.5, "still ready 0.5 s after SIGTERM"
            time.sleep(0.02)
        sender.join(30)
        response = answer["r"]
        assert response.status_code == 200, response.text
        expected = built.reference({"x": x})["y"]
        np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-5)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_to_the_whole_process_group_stops_cleanly(tmp_path: Path) -> None:
    """systemd (KillMode=control-group), ``timeout`` and ``kill -TERM -PGID`` signal every
    process of the group, the workers too: the server still owns the shutdown, so no worker
    dies first and none is reported as crashed or restarted."""
    built = write_onnx_linear(tmp_path / "m" / "1", seed=1)
    config = write_config(tmp_path / "modelyard.yaml", [model_config("m", {1: built})])
    # Its own process group, as under a service manager.
    proc, url = _serve(tmp_path, config, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        assert proc.stderr is not None
        log = proc.stderr.read().decode(errors="replace")
        assert "restarting" not in log, log
        assert " ERROR " not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
