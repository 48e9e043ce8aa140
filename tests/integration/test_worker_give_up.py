"""A model whose load keeps killing its worker is given up after three tries, with the reason;
the worker stays up for the device's other work and other devices never notice.

The crash is real: the test SIGKILLs the device's worker each time its memory shows the big
model's load under way (its RSS passes a threshold the small models never reach)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import httpx
import psutil

from modelyard.config import load_config
from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import serving

# 4096 x 8192 float32 weights: 128 MiB, far above what a worker holds with the small models.
HEAVY_FEATURES = (4096, 8192)
KILL_ABOVE_BYTES = 150 * 2**20


def _workers_of(device: str) -> list[psutil.Process]:
    me = psutil.Process(os.getpid())
    found = []
    for child in me.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if f"--device={device}" in cmdline:
            found.append(child)
    return found


def test_a_load_that_keeps_crashing_its_worker_is_given_up(tmp_path: Path) -> None:
    heavy = write_onnx_linear(tmp_path / "heavy" / "1", *HEAVY_FEATURES, seed=1)
    light = write_onnx_linear(tmp_path / "light" / "1", seed=2)
    config_path = write_config(
        tmp_path / "modelyard.yaml",
        [
            model_config("heavy", {1: heavy}, memory="600MiB", devices=["sim0"]),
            model_config("light", {1: light}, memory="10MiB", devices=["sim1"]),
        ],
        devices=[{"name": f"sim{i}", "kind": "cpu", "memory": "1GiB"} for i in range(2)],
    )
    config = load_config(config_path)
    kills: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            for proc in _workers_of("sim0"):
                with contextlib.suppress(psutil.Error):  # it may exit between look and kill
                    if proc.memory_info().rss > KILL_ABOVE_BYTES:
                        proc.kill()
                        kills.append(proc.pid)
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        with serving(config) as server:
            stop.set()
            status = httpx.get(f"{server.rest_url}/modelyard/v1/status").json()
            models = {m["model"]: m for m in status["models"]}
            assert models["heavy"]["state"] == "FAILED"
            assert "given up" in models["heavy"]["error"]
            assert "3 times" in models["heavy"]["error"]
            assert models["light"]["state"] == "AVAILABLE"
            r = httpx.post(
                f"{server.rest_url}/v1/models/light:predict", json={"instances": [[1, 2, 3, 4]]}
            )
            assert r.status_code == 200
            r = httpx.post(
                f"{server.rest_url}/v1/models/heavy:predict", json={"instances": [[0.0] * 4096]}
            )
            assert r.status_code == 503
            assert "given up" in r.json()["error"]
    finally:
        stop.set()
        thread.join(5)
    assert len(set(kills)) == 3
