"""Every ``python`` block of docs/clients.md runs, as a user would paste it, against a real
server, and prints what the model computes.

The server holds the demo's ``linear`` model (the same ONNX writer and seeds as the demo,
versions 1 and 2), with worker processes, on free ports; each block runs in its own Python
process (TensorFlow, which one block imports, must not load in the test process) with the
docs' addresses swapped for the server's.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import serving

DOCS = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
ROW = np.array([[0.5, 1.0, 1.5, 2.0]], dtype=np.float32)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def python_blocks(markdown: str) -> dict[str, str]:
    """Each ```python block, keyed by the heading above it."""
    blocks: dict[str, str] = {}
    heading = ""
    for part in re.split(r"^(## .*)$", markdown, flags=re.MULTILINE):
        if part.startswith("## "):
            heading = part[3:].strip()
            continue
        for code in re.findall(r"^```python\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL):
            blocks[heading] = code
    return blocks


def test_the_docs_hold_an_example_for_every_client() -> None:
    assert sorted(python_blocks(DOCS.read_text())) == [
        "KServe v2 REST (httpx)",
        "TF Serving REST (requests)",
        "TF Serving gRPC (tensorflow-serving-api)",
        "Triton's client, HTTP",
        "Triton's client, gRPC",
    ]


def _needs(block: str) -> str | None:
    """Why ``block`` cannot run here (a client not installed), or None."""
    for module in re.findall(r"^(?:import|from) ([\w.]+)", block, flags=re.MULTILINE):
        top = module.split(".")[0]
        if importlib.util.find_spec(top) is None:
            return f"{top} is not installed"
    return None


def test_every_client_example_prints_the_models_answer(tmp_path: Path) -> None:
    versions = {v: write_onnx_linear(tmp_path / "linear" / str(v), seed=v) for v in (1, 2)}
    config = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("linear", versions)],
        devices=[{"name": "cpu0", "kind": "cpu", "memory": "1GiB"}],
    )
    expected = versions[2].reference({"x": ROW})["y"][0]  # no version named: the latest
    blocks = python_blocks(DOCS.read_text())
    missing = {name: why for name, block in blocks.items() if (why := _needs(block))}
    with serving(config) as server:
        rest, grpc = server.rest_url.removeprefix("http://"), server.grpc_target

        def run(block: str) -> subprocess.CompletedProcess[str]:
            code = block.replace("127.0.0.1:8501", rest).replace("127.0.0.1:8500", grpc)
            return subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
                cwd=tmp_path,
            )

        runnable = {name: block for name, block in blocks.items() if name not in missing}
        with ThreadPoolExecutor(len(runnable)) as pool:
            results = dict(zip(runnable, pool.map(run, runnable.values()), strict=True))
    for name, done in results.items():
        assert done.returncode == 0, f"{name}:\n{done.stdout}\n{done.stderr[-3000:]}"
        printed = done.stdout.strip().splitlines()[-1]
        numbers = [float(n) for n in NUMBER.findall(printed)]
        np.testing.assert_allclose(numbers[-2:], expected, rtol=1e-5, err_msg=f"{name}: {printed}")
    if missing:
        pytest.skip(f"not run: {missing}")
