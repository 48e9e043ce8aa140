"""After ``modelyard serve`` loads a model, the footprint its worker measured is recorded, and
the next plan uses it instead of the estimate from the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from modelyard.testing.cli import modelyard_plan, served_ports
from modelyard.testing.models import model_config, write_config, write_onnx_linear


def _plan(config: Path, cache_dir: Path) -> dict[str, Any]:
    done = modelyard_plan(config, "--json", cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    (device,) = json.loads(done.stdout)["devices"]
    (model,) = device["models"]
    return dict(model)


def test_next_plan_uses_the_measured_footprint(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("linear", {1: write_onnx_linear(tmp_path / "linear" / "1", seed=1)})],
        devices=[{"name": "sim0", "kind": "cpu", "memory": "1GiB"}],
    )
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")}
    before = _plan(config, tmp_path / "cache")
    assert before["source"] == "estimated"

    ports_file = tmp_path / "ports.json"
    command = [sys.executable, "-m", "modelyard", "serve", str(config), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--rest_api_port", "0", "--ports-file", str(ports_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rest = f"http://127.0.0.1:{served_ports(proc, ports_file)['rest']}"
        assert httpx.get(f"{rest}/v2/health/ready").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0

    after = _plan(config, tmp_path / "cache")
    assert after["source"] == "measured"
    assert after["bytes"] > 0
    assert after["bytes"] != before["bytes"]
