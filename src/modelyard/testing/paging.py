"""Models for paging tests and benchmarks: ONNX lookup tables whose weights are ``mib`` MiB.

``write_onnx_table`` writes ``ids`` INT64 [-1] -> ``rows`` FP32 [-1, 64]: the rows of a table
(an ONNX Gather), so a model of 64 MiB of weights answers in microseconds and its answer is
exactly ``table[ids]`` (the numpy reference). The table is cheap to build (no random numbers)
and differs per ``seed``, so each model's answer tells which model answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelyard.config.schema import Platform
from modelyard.demo.models import ONNX_IR_VERSION, ONNX_OPSET, BuiltModel, artifact_path
from modelyard.tensors import DataType, Signature, TensorSpec

WIDTH = 64
"""Floats per row."""


_PERIOD = 997
"""Rows repeat every 997 rows (a prime: ids that differ by a small amount differ in value)."""


def table(rows: int, seed: int) -> np.ndarray:
    """The model's weights: ``rows`` x 64 FP32, row r = ((r % 997) * 64 + column) / 1000 +
    seed, so the table differs per seed and each row tells which row it is."""
    block = _block(seed)
    reps = -(-rows // _PERIOD)
    return np.tile(block, (reps, 1))[:rows]


def _block(seed: int) -> np.ndarray:
    cells = np.arange(_PERIOD * WIDTH, dtype=np.float32).reshape(_PERIOD, WIDTH)
    return cells * np.float32(0.001) + np.float32(seed)


def write_onnx_table(version_dir: Path, mib: float = 64.0, seed: int = 0) -> BuiltModel:
    """Write ``model.onnx`` with a ``mib`` MiB table; see the module doc. (Saved without the
    ONNX checker's full pass, which takes seconds on tens of MiB; the graph is one Gather.)"""
    rows = rows_of(mib)
    artifact = artifact_path(version_dir, "model.onnx")
    weights = table(rows, seed).tobytes()
    head, tail = _template(rows)
    with artifact.open("wb") as f:  # the same model bytes around this seed's table
        f.write(head)
        f.write(weights)
        f.write(tail)
    block = _block(seed)

    def reference(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(inputs["ids"], dtype=np.int64)
        if np.any((ids < -rows) | (ids >= rows)):
            raise IndexError("id out of range")
        return {"rows": block[(ids % rows) % _PERIOD]}

    return BuiltModel(
        artifact=artifact,
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("ids", DataType.INT64, (-1,)),),
            (TensorSpec("rows", DataType.FP32, (-1, WIDTH)),),
        ),
        reference=reference,
        example={"ids": np.array([0, rows - 1, rows // 2], dtype=np.int64)},
    )


_TEMPLATES: dict[int, tuple[bytes, bytes]] = {}


def _template(rows: int) -> tuple[bytes, bytes]:
    """The serialized model of ``rows`` rows, split around its table's raw bytes (built once
    per size: serializing tens of MiB through protobuf takes seconds on a loaded machine)."""
    if rows in _TEMPLATES:
        return _TEMPLATES[rows]
    from onnx import TensorProto, helper, numpy_helper

    marker = np.full((rows, WIDTH), 0.0, np.float32)
    marker.flat[:4] = [1.5e-7, 2.5e-7, 3.5e-7, 4.5e-7]  # bytes no header contains
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)],
        "table",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", WIDTH])],
        initializer=[numpy_helper.from_array(marker, "table")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="modelyard",
    )
    data = model.SerializeToString()
    start = data.index(marker.tobytes()[:16])
    size = rows * WIDTH * 4
    _TEMPLATES[rows] = (data[:start], data[start + size :])
    return _TEMPLATES[rows]


def rows_of(mib: float) -> int:
    return max(1, int(mib * 2**20) // (WIDTH * 4))


# -- a Zipf workload over many models, with the workers' RSS sampled (tests and bench) ------


@dataclass
class ZipfRun:
    """What ``run_zipf`` saw: requests, failures (status and body), answers that differ from
    the in-process reference, latencies, and each worker's peak RSS over the samples."""

    requests: int = 0
    failures: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    per_model: dict[str, int] = field(default_factory=dict)
    rss_peak: dict[int, int] = field(default_factory=dict)
    rss_samples: int = 0
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        return float(np.percentile(np.array(self.latencies_s), q))


def zipf_weights(n: int, s: float) -> np.ndarray:
    """P(rank k) proportional to k^-s, k = 1..n."""
    w: np.ndarray = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    normalised: np.ndarray = w / w.sum()
    return normalised


def run_zipf(
    url: str,
    models: Mapping[str, BuiltModel],
    *,
    clients: int = 4,
    seconds: float = 60.0,
    s: float = 1.1,
    seed: int = 0,
    worker_pids: Sequence[int] = (),
    sample_every_s: float = 0.1,
    timeout_s: float = 120.0,
) -> ZipfRun:
    """``clients`` threads, each sending KServe v2 REST requests for models chosen
    Zipf(``s``) (the first name the hottest) for ``seconds``; every answer is compared with the
    model's numpy reference. Meanwhile each of ``worker_pids`` has its RSS sampled every
    ``sample_every_s``."""
    import httpx
    import psutil

    names = list(models)
    weights = zipf_weights(len(names), s)
    result = ZipfRun(per_model=dict.fromkeys(names, 0))
    lock = threading.Lock()
    stop = threading.Event()
    end = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = np.random.default_rng(seed * 1000 + index)
        with httpx.Client(base_url=url, timeout=timeout_s) as http:
            while time.monotonic() < end:
                name = names[int(rng.choice(len(names), p=weights))]
                built = models[name]
                rows = int(built.example["ids"].max()) + 1
                ids = rng.integers(0, rows, size=4, dtype=np.int64)
                body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [4],
                                    "data": ids.tolist()}]}  # fmt: skip
                started = time.monotonic()
                try:
                    reply = http.post(f"/v2/models/{name}/infer", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        result.requests += 1
                        result.failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    continue
                took = time.monotonic() - started
                with lock:
                    result.requests += 1
                    result.per_model[name] += 1
                    if reply.status_code != 200:
                        result.failures.append(f"{name}: {reply.status_code} {reply.text[:300]}")
                        continue
                    result.latencies_s.append(took)
                out = reply.json()["outputs"][0]
                got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
                if not np.array_equal(got, built.reference({"ids": ids})["rows"]):
                    with lock:
                        result.wrong.append(f"{name}: ids {ids.tolist()}")

    def sampler() -> None:
        procs = {pid: psutil.Process(pid) for pid in worker_pids}
        while not stop.is_set():
            for pid, proc in procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                result.rss_peak[pid] = max(result.rss_peak.get(pid, 0), rss)
            result.rss_samples += 1
            stop.wait(sample_every_s)

    watch = threading.Thread(target=sampler, daemon=True)
    watch.start()
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout_s + 10)
    result.seconds = time.monotonic() - started
    stop.set()
    watch.join(5)
    return result


def framework_baseline_bytes() -> int:
    """RSS of a fresh process holding what a CPU worker holds before its first model: the
    worker's modules and ONNX Runtime with one tiny session (measured in a subprocess)."""
    import subprocess
    import sys

    code = (
        "import gc, psutil, modelyard.workers.host as h\n"
        "from modelyard.backends import get_backend\n"
        "from modelyard.config.schema import Platform\n"
        "get_backend(Platform.ONNX).prepare('cpu')\n"
        "gc.collect(); h.release_free_memory()\n"
        "print(psutil.Process().memory_info().rss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])
