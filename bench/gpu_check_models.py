"""The models the GPU check builds where it runs: MLPs of a chosen size, saved as torch.export
programs, each with its answer to an example input computed in process.

Models are built on the machine that serves them (a program saved by this machine's torch may
not load in the GPU machine's), with random weights drawn on the spot on the device that will
serve them (``torch.randn`` on the GPU is instant where 4 GiB drawn on a CPU takes seconds).

An MLP here is ``in -> d -> d -> d -> d -> out`` with ReLU between layers; ``MlpShape.of_bytes``
picks ``d`` so the weights (FP32) come to a target size: 4 GiB gives d = 18,904 (three d x d
matrices of 1.33 GiB each). One process exports the program once per shape and saves it once
per model after copying that model's weights into the same parameters (exporting is the slow
part; the program's state dict holds the module's own tensors).

Imports torch inside functions only: the driver (``gpu_check.py``) never holds a CUDA context.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IN_FEATURES = 64
OUT_FEATURES = 16
SQUARE_LAYERS = 3


@dataclass(frozen=True)
class MlpShape:
    """Layer widths, input first; FP32 weights and biases."""

    layers: tuple[int, ...]

    @property
    def weight_bytes(self) -> int:
        pairs = zip(self.layers[:-1], self.layers[1:], strict=True)
        return sum(4 * (fan_in * fan_out + fan_out) for fan_in, fan_out in pairs)

    @classmethod
    def of_bytes(cls, target: int) -> MlpShape:
        """The widest ``64 -> d x 4 -> 16`` MLP whose weights are at most ``target`` bytes."""
        d = int(math.sqrt(target / 4 / SQUARE_LAYERS))
        while d > 1:
            shape = cls((IN_FEATURES, *([d] * (SQUARE_LAYERS + 1)), OUT_FEATURES))
            if shape.weight_bytes <= target:
                return shape
            d -= 1
        raise ValueError(f"no MLP of {target} bytes")


@dataclass(frozen=True)
class BuildJob:
    """One model to write: its version folder, weights seed, and where its answer is kept."""

    name: str
    version_dir: str
    seed: int
    expected: str  # .npz with x (the example) and y (the model's answer to it, in process)
    link_to: str = ""  # set: hard-link this written artifact instead (too little disk for all)


def build_all(
    jobs: list[BuildJob], shape: MlpShape, device: str, rows: int = 2
) -> list[dict[str, Any]]:
    """Write every job's ``model.pt2`` and expected answer, in order; returns one record each.

    ``device``: where weights are drawn and the in-process answer computed (``cuda:0``, ``cpu``).
    Runs in a process of its own when the caller builds in parallel (one export per process).
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # the server's default; answers must match
    pairs = list(zip(shape.layers[:-1], shape.layers[1:], strict=True))
    module = _module(
        [(torch.empty(o, i), torch.empty(o)) for i, o in pairs]
    )  # uninitialised: every model's weights are copied in below
    # Traced with 2 rows: a dynamic dimension traced at 1 is specialised to 1.
    example = torch.zeros(max(2, rows), shape.layers[0])
    began = time.monotonic()
    program = torch.export.export(
        module, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}
    )
    export_s = time.monotonic() - began
    records = []
    for job in jobs:
        began = time.monotonic()
        version_dir = Path(job.version_dir)
        version_dir.mkdir(parents=True, exist_ok=True)
        artifact = version_dir / "model.pt2"
        generator = torch.Generator(device=device)
        generator.manual_seed(job.seed)
        weights = []
        for (fan_in, fan_out), (w_param, b_param) in zip(pairs, _params(module), strict=True):
            w = torch.randn(fan_out, fan_in, generator=generator, device=device)
            w.mul_(fan_in**-0.5)  # activations stay of order 1 through the layers
            b = torch.randn(fan_out, generator=generator, device=device).mul_(0.1)
            with torch.no_grad():
                w_param.copy_(w)
                b_param.copy_(b)
            weights.append((w, b))
        x = torch.randn(rows, shape.layers[0], generator=generator, device=device)
        y = _forward(weights, x)
        np.savez(job.expected, x=x.cpu().numpy(), y=y.cpu().numpy())
        del weights, x, y
        torch.export.save(program, str(artifact))
        records.append(
            {
                "name": job.name,
                "seconds": round(time.monotonic() - began, 3),
                "artifact_bytes": artifact.stat().st_size,
            }
        )
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return [{**r, "export_s": round(export_s, 3)} for r in records]


def _module(weights: list[tuple[Any, Any]]) -> Any:
    import torch

    class Mlp(torch.nn.Module):
        """``relu(... relu(x @ w0.T + b0) ...) @ wN.T + bN`` over the given tensors."""

        def __init__(self) -> None:
            super().__init__()
            self.depth = len(weights)
            for i, (w, b) in enumerate(weights):
                self.register_parameter(f"w{i}", torch.nn.Parameter(w, requires_grad=False))
                self.register_parameter(f"b{i}", torch.nn.Parameter(b, requires_grad=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i in range(self.depth):
                x = torch.nn.functional.linear(x, getattr(self, f"w{i}"), getattr(self, f"b{i}"))
                if i < self.depth - 1:
                    x = torch.relu(x)
            return x

    return Mlp()


def _params(module: Any) -> list[tuple[Any, Any]]:
    return [(getattr(module, f"w{i}"), getattr(module, f"b{i}")) for i in range(module.depth)]


def _forward(weights: list[tuple[Any, Any]], x: Any) -> Any:
    """The model computed in process, with the same operators the exported program runs."""
    import torch

    with torch.no_grad():
        for i, (w, b) in enumerate(weights):
            x = torch.nn.functional.linear(x, w, b)
            if i < len(weights) - 1:
                x = torch.relu(x)
    return x


def build_parallel(
    jobs: list[BuildJob], shape: MlpShape, device: str, processes: int
) -> list[dict[str, Any]]:
    """``build_all`` split over ``processes`` fresh processes (1: in this process). Jobs that
    hard-link another job's artifact run after every written one, in this process."""
    written = [j for j in jobs if not j.link_to]
    linked = [j for j in jobs if j.link_to]
    if processes <= 1 or len(written) <= 1:
        records = build_all(written, shape, device)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        parts = [written[i::processes] for i in range(processes)]
        context = multiprocessing.get_context("spawn")  # no CUDA state crosses a fork
        with ProcessPoolExecutor(len(parts), mp_context=context) as pool:
            futures = [pool.submit(build_all, part, shape, device) for part in parts if part]
            records = [r for f in futures for r in f.result()]
    sources = {str(Path(j.version_dir) / "model.pt2"): j for j in written}
    for job in linked:
        Path(job.version_dir).mkdir(parents=True, exist_ok=True)
        (Path(job.version_dir) / "model.pt2").hardlink_to(job.link_to)
        shutil.copyfile(sources[job.link_to].expected, job.expected)
        records.append({"name": job.name, "linked_to": job.link_to, "seconds": 0.0})
    return records


def load_expected(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The example input and the in-process answer saved by ``build_all``."""
    with np.load(path) as data:
        return data["x"], data["y"]
