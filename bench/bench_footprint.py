"""Estimated vs. measured footprint of small test models on CPU (RSS growth of a fresh process).

Builds TorchScript, torch.export and ONNX versions of an MLP (weights of about 16, 64 and 256
MiB) in a temporary folder, estimates each with modelyard.planner.estimate (no framework
import), then loads each in a fresh Python process that has already imported its framework and
reports how much its RSS grew over the load and one inference.

    python bench/bench_footprint.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from modelyard.planner.estimate import estimate_footprint

MiB = 2**20

_LOAD = r"""
import gc, json, sys, psutil
kind, warm, path, width = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np
if kind == "onnx":
    import onnxruntime as ort
else:
    import torch


def run(path, width):
  global sess, m
  if kind == "onnx":
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    sess.run(None, {sess.get_inputs()[0].name: np.zeros((8, width), np.float32)})
  elif kind == "torchscript":
    m = torch.jit.load(path)
    with torch.no_grad():
        m(torch.zeros(8, width))
  else:
    m = torch.export.load(path).module()
    with torch.no_grad():
        m(torch.zeros(8, width))


# A small model of the same kind first: the framework's lazy imports and first-call caches
# are paid once per worker process, not per model.
run(warm, 64)
warm_objects = (globals().get("sess"), globals().get("m"))  # keep the warm model loaded
proc = psutil.Process()
gc.collect()
before = proc.memory_info().rss
run(path, width)
gc.collect()
print(json.dumps({"rss_growth": proc.memory_info().rss - before}))
"""


def build(root: Path, width: int, depth: int) -> dict[str, Path]:
    import torch

    layers = [torch.nn.Linear(width, width) for _ in range(depth)]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.zeros(8, width)
    out = {}
    for kind, name in (
        ("torchscript", "model.pt"),
        ("torch_export", "model.pt2"),
        ("onnx", "model.onnx"),
    ):
        folder = root / f"{kind}-{width}" / "1"
        folder.mkdir(parents=True)
        if kind == "torchscript":
            torch.jit.save(torch.jit.script(model), str(folder / name))
        elif kind == "torch_export":
            torch.export.save(torch.export.export(model, (x,)), str(folder / name))
        else:
            torch.onnx.export(
                model,
                (x,),
                str(folder / name),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )
        out[kind] = folder
    return out


def main() -> int:
    print(f"python {sys.version.split()[0]}")
    print("| model | weights | estimate | measured RSS growth | estimate / measured |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        warm = build(Path(tmp), 64, 1)
        for width, depth in ((1024, 4), (2048, 4), (4096, 4)):
            for kind, folder in build(Path(tmp), width, depth).items():
                warm_artifact = next(p for p in warm[kind].iterdir() if p.name.startswith("model."))
                est = estimate_footprint(folder)
                artifact = next(p for p in folder.iterdir() if p.name.startswith("model."))
                res = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _LOAD,
                        kind,
                        str(warm_artifact),
                        str(artifact),
                        str(width),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured = json.loads(res.stdout.strip().splitlines()[-1])["rss_growth"]
                print(
                    f"| {kind} {depth}x{width}x{width} | {est.weights_bytes / MiB:.1f} MiB "
                    f"| {est.total_bytes / MiB:.1f} MiB | {measured / MiB:.1f} MiB "
                    f"| {est.total_bytes / measured:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
