"""``modelyard serve`` as the GPU check drives it: its own process, a user's command line.

``Served`` starts ``python -m modelyard serve CONFIG`` on free ports (the ports file), with its
log in a file, and gives the check what it reads from outside: the status API, each worker's
own report, KServe v2 inference, the model states. Stopping sends SIGTERM (the server stops its
workers) and SIGKILLs the server only when it has not exited in time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


class ServeFailed(RuntimeError):
    """The server exited, or did not get where it should within its time."""


class Served:
    """One ``modelyard serve`` process; use as a context manager."""

    def __init__(
        self, config: Path, work: Path, log_path: Path, env: dict[str, str], start_timeout_s: float
    ) -> None:
        self.config = config
        self._ports_file = work / f"ports-{config.stem}.json"
        self._log_path = log_path
        self._env = env
        self._start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.listening_s: float | None = None  # from the command to the ports file
        self.rest = ""
        self.rest_port = 0
        self.grpc_port = 0
        self.client = httpx.Client(timeout=60)

    def __enter__(self) -> Served:
        self._ports_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "modelyard", "serve", str(self.config)]
        command += ["--port=0", "--rest_api_port=0", f"--ports-file={self._ports_file}"]
        log = self._log_path.open("ab")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*command, "--log-level=INFO"], stdout=log, stderr=subprocess.STDOUT, env=self._env
        )
        log.close()
        deadline = self.started + self._start_timeout_s
        while not self._ports_file.exists():
            if self.process.poll() is not None:
                raise ServeFailed(
                    f"modelyard serve exited with {self.process.returncode} before listening; "
                    f"see {self._log_path.name}"
                )
            if time.monotonic() > deadline:
                raise ServeFailed(f"modelyard serve not listening after {self._start_timeout_s} s")
            time.sleep(0.05)
        self.listening_s = time.monotonic() - self.started
        ports = json.loads(self._ports_file.read_text())
        self.rest_port = int(ports["rest"])
        self.rest = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_port = int(ports["grpc"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, wait_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``wait_s``; the exit code (None when it had to be killed)."""
        self.client.close()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process is not None else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None

    # -- what the check reads ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        response = self.client.get(f"{self.rest}/modelyard/v1/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def report(self, device: str) -> dict[str, Any]:
        response = self.client.get(f"{self.rest}/modelyard/v1/status/devices/{device}/report")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def states(self) -> dict[str, str]:
        """Model name -> state (one version per model here)."""
        return {m["model"]: m["state"] for m in self.status()["models"]}

    def wait_available(self, names: list[str], timeout_s: float) -> float:
        """Seconds from the command until every one of ``names`` is AVAILABLE.

        Raises ServeFailed naming the states when that takes longer than ``timeout_s`` from now.
        """
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.states()
            if all(states.get(n) == "AVAILABLE" for n in names):
                return time.monotonic() - self.started
            time.sleep(0.1)
        waiting = {n: states.get(n) for n in names if states.get(n) != "AVAILABLE"}
        raise ServeFailed(f"not AVAILABLE after {timeout_s:.0f} s: {waiting}")

    def infer(self, model: str, x: np.ndarray, timeout_s: float = 60.0) -> np.ndarray:
        """KServe v2 REST (JSON) with input ``x``; the first output. Raises ServeFailed on an
        error answer, with the status and the server's message."""
        tensor = {
            "name": "x",
            "shape": list(x.shape),
            "datatype": "FP32",
            "data": x.ravel().tolist(),
        }
        response = self.client.post(
            f"{self.rest}/v2/models/{model}/infer", json={"inputs": [tensor]}, timeout=timeout_s
        )
        if response.status_code != 200:
            raise ServeFailed(f"{model}: HTTP {response.status_code}: {response.text[:300]}")
        out = response.json()["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def serve_env(work: Path) -> dict[str, str]:
    """The server's environment: this one, with a fresh footprint cache and state folder in
    ``work`` (so the plan uses estimates, not an earlier run's measurements)."""
    env = dict(os.environ)
    env["MODELYARD_CACHE_DIR"] = str(work / "cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def plan_json(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """``modelyard plan CONFIG --json``, with its exit code under ``exit_code``."""
    done = subprocess.run(
        [sys.executable, "-m", "modelyard", "plan", str(config), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        result = {"stdout": done.stdout[-2000:]}
    result["exit_code"] = done.returncode
    if done.returncode != 0:
        result["stderr"] = done.stderr[-2000:]
    return result


def write_config(
    path: Path,
    devices: list[dict[str, Any]],
    models: list[dict[str, Any]],
    headroom_fraction: float | None = None,
) -> Path:
    """A modelyard YAML config (JSON is YAML) with no polling: what it names is what it serves."""
    config: dict[str, Any] = {"devices": devices, "models": models, "poll_interval_seconds": 0}
    if headroom_fraction is not None:
        config["headroom_fraction"] = headroom_fraction
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path
