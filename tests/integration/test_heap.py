"""``modelyard.server.heap``: a process that decodes and answers large JSON bodies one after
another stops paying the kernel for fresh pages once it keeps its freed memory.

Each case runs in its own Python process (the setting is process-wide), doing what the front
end does for a medium request (8 x 1,024 float32): the request body, simdjson's parse, the
array, orjson's answer, all freed before the next; the process's minor page faults per round are
read with ``getrusage``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import modelyard

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt's thresholds are glibc's",
)

ROUNDS = 200

_SCRIPT = f"""
import resource, sys
import numpy as np, orjson, simdjson
from modelyard.server import heap
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
x = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)

def one_request():
    body = orjson.dumps({{"instances": x}}, option=orjson.OPT_SERIALIZE_NUMPY)
    doc = simdjson.Parser().parse(body)
    flat = np.frombuffer(doc["instances"].as_buffer(of_type="d"), np.float64)
    del doc
    answer = {{"predictions": flat.astype(np.float32).reshape(8, 1024)}}
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

for _ in range(20):
    one_request()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({ROUNDS}):
    one_request()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(kept, faults / {ROUNDS})
"""


def _faults_per_round(mode: str) -> tuple[str, float]:
    src = str(Path(modelyard.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    kept, faults = out.stdout.split()
    return kept, float(faults)


def test_kept_freed_memory_takes_no_fresh_pages_per_large_request() -> None:
    kept, faults_kept = _faults_per_round("keep")
    _, faults_default = _faults_per_round("default")
    assert kept == "True"  # glibc took the thresholds
    # With glibc's defaults every round maps and zeroes its pages again (about 90 here).
    assert faults_default >= 10, f"the default heap did not churn ({faults_default}/round)"
    assert faults_kept < 1, f"{faults_kept} page faults per round with the heap kept"
