"""The in-process floor: the benchmark model called directly through modelyard's backend.

No server, no sockets, no serialisation: ``LoadedModel.predict`` in a loop on one thread. That
is the most a server could deliver from the same model on the same machine, so every server
figure is reported as a share of it. Measured unbatched (the request's own rows) and over a
sweep of batch sizes, from which the best rows/s is the batched floor.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench_models import BenchModel

from modelyard.backends import get_backend
from modelyard.backends.onnx import THREADS_ENV
from modelyard.config.schema import Platform


@dataclass(frozen=True)
class FloorPoint:
    rows: int
    p50_ms: float
    rows_per_s: float


def measure(
    model: BenchModel, version_dir: Path, sizes: list[int], seconds: float
) -> list[FloorPoint]:
    """One point per batch size: median call time and rows/s over ``seconds`` of calls.

    The session gets ONNX Runtime's own thread pool (``THREADS_ENV=0``), as every floor before
    the server learnt to give a model with a short call one thread: the batched floor is the
    model's best over batch sizes, which a pool reaches at 256 rows. Set for the load only, so
    servers started later by the same process keep their own choice."""
    saved = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = "0"
    try:
        loaded = get_backend(Platform.ONNX).load(version_dir, "cpu", None)
    finally:
        if saved is None:
            del os.environ[THREADS_ENV]
        else:
            os.environ[THREADS_ENV] = saved
    points = []
    try:
        for rows in sizes:
            inputs = {"x": model.example(rows)}
            for _ in range(3):  # warm the allocator and the kernels for this shape
                loaded.predict(inputs)
            times: list[float] = []
            started = time.perf_counter()
            while time.perf_counter() - started < seconds or len(times) < 5:
                began = time.perf_counter()
                loaded.predict(inputs)
                times.append(time.perf_counter() - began)
            rate = rows * len(times) / sum(times)
            points.append(FloorPoint(rows, statistics.median(times) * 1e3, rate))
    finally:
        loaded.unload()
    return points
