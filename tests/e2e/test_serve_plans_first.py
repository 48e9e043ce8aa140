"""``modelyard serve`` runs the planner before loading: an infeasible set is refused with the
planner's explanation, and ``--serve-what-fits`` serves the models that fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from modelyard.testing.cli import served_ports
from modelyard.testing.models import model_config, write_config, write_onnx_linear


def _config(tmp_path: Path) -> Path:
    models = [
        model_config(name, {1: write_onnx_linear(tmp_path / name / "1", seed=i)}, memory="300MiB")
        for i, name in enumerate(["alpha", "beta"])
    ]
    return write_config(
        tmp_path / "modelyard.yaml",
        models,
        devices=[{"name": "sim0", "kind": "cpu", "memory": "512MiB"}],
    )


def _serve(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "modelyard", "serve", "--port", "0", "--rest_api_port", "0"]
    return subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MODELYARD_CACHE_DIR": str(kwargs["cache"])},
    )


def test_infeasible_set_is_refused_before_anything_loads(tmp_path: Path) -> None:
    proc = _serve(str(_config(tmp_path)), cache=tmp_path / "cache")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert "refusing to load" in err
    assert "beta" in err or "alpha" in err  # the explanation names the model left out
    assert "sim0" in err
    assert "--serve-what-fits" in err


def test_serve_what_fits_serves_the_rest_and_says_why_not(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    proc = _serve(
        str(_config(tmp_path)),
        "--serve-what-fits",
        "--ports-file",
        str(ports_file),
        cache=tmp_path / "cache",
    )
    try:
        rest = f"http://127.0.0.1:{served_ports(proc, ports_file)['rest']}"
        states = {
            name: httpx.get(f"{rest}/v1/models/{name}").json()["model_version_status"][0]
            for name in ("alpha", "beta")
        }
        served = [n for n, s in states.items() if s["state"] == "AVAILABLE"]
        refused = [n for n, s in states.items() if s["state"] != "AVAILABLE"]
        assert len(served) == 1, states
        assert len(refused) == 1, states
        assert "not loaded" in states[refused[0]]["status"]["error_message"]
        ok = httpx.post(f"{rest}/v1/models/{served[0]}:predict", json={"instances": [[1, 2, 3, 4]]})
        assert ok.status_code == 200
        down = httpx.post(
            f"{rest}/v1/models/{refused[0]}:predict", json={"instances": [[1, 2, 3, 4]]}
        )
        assert down.status_code == 503
        assert "not loaded" in down.json()["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
