"""Cold start: ``modelyard serve`` with two small models, from the command to the first correct
answer of both, as a user waits for it; and the front end's resident memory once it serves.

The models are the tiny ONNX MLP twice (``a`` and ``b``). Each try is a fresh process; the
median of ``tries`` is reported with every try.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from bench_models import TINY, write_mlp

MODELS = ("a", "b")


@dataclass
class ColdStart:
    seconds: list[float]
    front_end_rss: int  # bytes, after the first answers, from the last try

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def measure(root: Path, tries: int = 3) -> ColdStart:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["models:"]
    for name in MODELS:
        write_mlp(TINY, root / name / "1")
        lines.append(f"  - {{name: {name}, base_path: {root / name}}}")
    config = root / "modelyard.yaml"
    config.write_text("\n".join(lines) + "\n")
    x = TINY.example()
    from modelyard.backends import get_backend
    from modelyard.config.schema import Platform

    loaded = get_backend(Platform.ONNX).load(root / MODELS[0] / "1", "cpu", None)
    want = loaded.predict({"x": x})["y"]
    loaded.unload()
    body = {"instances": x.tolist()}
    seconds: list[float] = []
    rss = 0
    for attempt in range(tries):
        ports_file = root / f"ports-{attempt}.json"
        command = [
            str(Path(sys.executable).parent / "modelyard"),
            "serve",
            str(config),
            "--port=0",
            "--rest_api_port=0",
            f"--ports-file={ports_file}",
            "--log-level=WARNING",
        ]
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            answered: set[str] = set()
            with httpx.Client(timeout=5) as client:
                while answered != set(MODELS):
                    if process.poll() is not None or time.monotonic() - began > 120:
                        raise RuntimeError("modelyard serve did not answer within 120 s")
                    if not ports_file.exists() or not ports_file.read_text().strip():
                        time.sleep(0.02)
                        continue
                    rest = json.loads(ports_file.read_text())["rest"]
                    for name in set(MODELS) - answered:
                        try:
                            r = client.post(
                                f"http://127.0.0.1:{rest}/v1/models/{name}:predict", json=body
                            )
                        except httpx.TransportError:
                            continue
                        got = np.array(r.json().get("predictions", []), dtype=np.float32)
                        if r.status_code == 200 and np.allclose(got, want, atol=1e-4):
                            answered.add(name)
                    time.sleep(0.01)
            seconds.append(time.monotonic() - began)
            rss = psutil.Process(process.pid).memory_info().rss
        finally:
            process.terminate()
            process.wait(60)
    return ColdStart(seconds, rss)
