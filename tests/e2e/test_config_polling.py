"""``--model_config_file_poll_wait_seconds``: editing the config file while serving adds and
removes models, and the model that stays answers throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from modelyard.testing.models import BuiltModel, model_config, write_config, write_onnx_linear


def _wait(predicate: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


def test_editing_the_config_file_adds_and_removes_models(tmp_path: Path) -> None:
    built = {n: write_onnx_linear(tmp_path / n / "1", seed=i) for i, n in enumerate("abc")}

    def write(names: str) -> Path:
        entries = [model_config(n, {1: built[n]}) for n in names]
        return write_config(tmp_path / "modelyard.yaml", entries)

    config = write("ab")
    ports = tmp_path / "ports.json"
    command = [sys.executable, "-m", "modelyard", "serve", str(config), "--port", "0"]
    polling = ["--model_config_file_poll_wait_seconds", "0.2"]
    proc = subprocess.Popen(
        [*command, "--rest_api_port", "0", "--ports-file", str(ports), *polling],
        env={**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    failures: list[str] = []
    stop = threading.Event()
    try:
        _wait(ports.exists, 120, "the server to listen")
        url = f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"
        _wait(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 60, "ready")

        def predict(name: str, model: BuiltModel) -> httpx.Response:
            x = model.example["x"]
            return httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": x.tolist()})

        def keep_asking_a() -> None:
            want = built["a"].reference(built["a"].example)["y"]
            while not stop.is_set():
                r = predict("a", built["a"])
                if r.status_code != 200:
                    failures.append(r.text)
                elif not np.allclose(r.json()["predictions"], want, rtol=1e-5):
                    failures.append(f"wrong answer {r.text}")

        asker = threading.Thread(target=keep_asking_a)
        asker.start()
        write("ac")  # b goes, c comes, a stays
        _wait(lambda: predict("c", built["c"]).status_code == 200, 20, "c to serve")
        _wait(lambda: httpx.get(f"{url}/v1/models/b").status_code == 404, 20, "b to be gone")
        stop.set()
        asker.join(30)
        assert failures == []
        c = predict("c", built["c"]).json()["predictions"]
        np.testing.assert_allclose(c, built["c"].reference(built["c"].example)["y"], rtol=1e-5)
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
