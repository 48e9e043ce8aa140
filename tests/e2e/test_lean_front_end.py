"""The front end holds no ML framework: ``modelyard serve`` with an ONNX and a TorchScript model
loads torch and onnxruntime only in its worker, so the front end process stays small.

What a user notices: the server's own process (the one they started) takes tens of MB, not the
hundreds a framework costs, and the models still answer correctly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import psutil

from modelyard.testing.cli import served_ports
from modelyard.testing.models import (
    model_config,
    write_config,
    write_onnx_linear,
    write_torchscript_mlp,
)

FRAMEWORK_LIBRARIES = {
    "torch": ("/torch/_C.", "libtorch"),
    "onnxruntime": ("onnxruntime_pybind11_state",),
    "tensorflow": ("_pywrap_tensorflow", "libtensorflow"),
}
"""The native libraries a framework's import maps into a process: a process that imported the
framework has them in ``/proc/PID/maps`` (the import cannot be undone, so this is its module list
for these purposes, read from outside)."""

FRONT_END_RSS_LIMIT = 120 * 2**20
"""Issue 18: the front end's resident memory with small models (measured about 80 MB)."""


def _frameworks_in(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, marks in FRAMEWORK_LIBRARIES.items() if any(m in maps for m in marks)}


def test_front_end_imports_no_framework_its_worker_does(tmp_path: Path) -> None:
    linear = write_onnx_linear(tmp_path / "linear" / "1", seed=1)
    scripted = write_torchscript_mlp(tmp_path / "scripted" / "1", seed=2)
    config = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("linear", {1: linear}), model_config("scripted", {1: scripted})],
    )
    ports_file = tmp_path / "ports.json"
    command = [sys.executable, "-m", "modelyard", "serve", str(config), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--rest_api_port", "0", "--ports-file", str(ports_file)],
        env={**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rest = f"http://127.0.0.1:{served_ports(proc, ports_file)['rest']}"
        for name, built in (("linear", linear), ("scripted", scripted)):
            (x,) = built.example.values()
            answer = httpx.post(
                f"{rest}/v1/models/{name}:predict", json={"instances": x.tolist()}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            (want,) = built.reference(built.example).values()
            np.testing.assert_allclose(
                np.array(answer.json()["predictions"]), want, rtol=1e-5, atol=1e-6
            )

        front = psutil.Process(proc.pid)
        workers = [
            p for p in front.children() if "modelyard.workers.worker" in " ".join(p.cmdline())
        ]
        assert workers, "no worker process found"
        # The worker holds both frameworks (so the check below can see one when it is there) ...
        assert {"torch", "onnxruntime"} <= set().union(*(_frameworks_in(w.pid) for w in workers))
        # ... and the front end none.
        assert _frameworks_in(proc.pid) == set()
        rss = front.memory_info().rss
        assert rss <= FRONT_END_RSS_LIMIT, f"front end holds {rss / 2**20:.0f} MiB"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
