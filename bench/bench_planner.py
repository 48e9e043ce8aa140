"""Planner benchmark: planning time and quality for 100 / 1,000 / 10,000 models on 8 / 64 / 512
devices, greedy alone vs. CP-SAT, on the same seeded random instances.

Quality is the peak device utilisation (used / capacity) against a lower bound:
max(total bytes / total capacity, for each model its bytes / the largest device it may use).
Instances: model sizes log-uniform in [64 MiB, 8 GiB]; devices 16, 24, 40 or 80 GiB; 10 % of the
models pinned to 2 random devices, 10 % with 2 replicas; the number of models per device decides
how full the devices get (models are cut to fit 90 % of total capacity on average).

    python bench/bench_planner.py            # the full grid (a few minutes on 2 cores)
    python bench/bench_planner.py --quick    # 100 and 1,000 models only
    python bench/bench_planner.py --tight    # also: tight packings where greedy can miss
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import math
import os
import platform
import random
import sys
import time

from modelyard.config.schema import DeviceKind
from modelyard.ids import VersionKey
from modelyard.planner import Device, ModelDemand, PlacerOptions, Plan, SolverUse, place

GiB = 2**30
MiB = 2**20


def instance(n_models: int, n_devices: int, seed: int) -> tuple[list[ModelDemand], list[Device]]:
    rng = random.Random(seed)
    devices = [
        Device(f"gpu{j}", DeviceKind.CUDA, j, c * GiB, c * GiB)
        for j, c in enumerate(rng.choice((16, 24, 40, 80)) for _ in range(n_devices))
    ]
    capacity = sum(d.capacity_bytes for d in devices)
    raw = [math.exp(rng.uniform(math.log(64 * MiB), math.log(8 * GiB))) for _ in range(n_models)]
    # Scale sizes so the set fills ~75 % of total capacity (replicas included), then cap.
    demands = []
    names = [d.name for d in devices]
    kinds = [rng.random() for _ in range(n_models)]
    weight = sum(r * (2 if k > 0.9 else 1) for r, k in zip(raw, kinds, strict=True))
    factor = 0.75 * capacity / weight
    for i, (r, k) in enumerate(zip(raw, kinds, strict=True)):
        size = min(int(r * factor), 12 * GiB)
        pins = tuple(rng.sample(names, 2)) if k < 0.1 else None
        demands.append(
            ModelDemand(VersionKey(f"m{i}", 1), size, pins=pins, replicas=2 if k > 0.9 else 1)
        )
    return demands, devices


def tight_instance(
    n_models: int, n_devices: int, seed: int
) -> tuple[list[ModelDemand], list[Device]]:
    """Devices of 12 GiB filled to 100 % by parts cut from each device's capacity."""
    rng = random.Random(seed)
    devices = [Device(f"gpu{j}", DeviceKind.CUDA, j, 12 * GiB, 12 * GiB) for j in range(n_devices)]
    sizes: list[int] = []
    per = max(1, n_models // n_devices)
    for _ in range(n_devices):
        cuts = sorted(rng.sample(range(1, 12 * 16), per - 1)) if per > 1 else []
        bounds = [0, *cuts, 12 * 16]
        sizes += [(b - a) * GiB // 16 for a, b in itertools.pairwise(bounds)]
    rng.shuffle(sizes)
    demands = [ModelDemand(VersionKey(f"t{i}", 1), s) for i, s in enumerate(sizes)]
    return demands, devices


def lower_bound(demands: list[ModelDemand], devices: list[Device]) -> float:
    total = sum(d.bytes * d.replicas for d in demands)
    bound = total / sum(d.capacity_bytes for d in devices)
    for dem in demands:
        caps = [dev.capacity_bytes for dev in devices if dem.allows(dev.name)]
        if caps:
            bound = max(bound, dem.bytes / max(caps))
    return bound


def run(demands: list[ModelDemand], devices: list[Device], mode: SolverUse) -> tuple[float, Plan]:
    opts = PlacerOptions(
        solver=mode, solver_max_pairs=10**9 if mode is SolverUse.ALWAYS else 50_000
    )
    start = time.perf_counter()
    plan = place(demands, devices, headroom_fraction=0.0, options=opts)
    return time.perf_counter() - start, plan


def row(label: str, demands: list[ModelDemand], devices: list[Device], mode: SolverUse) -> str:
    seconds, plan = run(demands, devices, mode)
    lb = lower_bound(demands, devices)
    placed = sum(len(a.devices) for a in plan.assignments)
    wanted = sum(a.wanted for a in plan.assignments)
    gap = plan.max_utilisation / lb - 1 if lb else 0.0
    return (
        f"| {label} | {len(demands):,} | {len(devices)} | {mode.value} | {plan.strategy.value} "
        f"| {seconds:.3f} | {placed}/{wanted} | {plan.max_utilisation:.3f} | {lb:.3f} "
        f"| {gap:+.1%} |"
    )


def versions() -> str:
    found = []
    for pkg in ("ortools", "modelyard"):
        try:
            found.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{pkg} not installed")
    return ", ".join(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tight", action="store_true")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.node()} {cpu}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"python {sys.version.split()[0]}, {versions()}")
    print()
    print(
        "| instance | models | devices | solver | used | seconds | replicas placed | peak use "
        "| lower bound | gap |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
    sizes = [100, 1_000] if args.quick else [100, 1_000, 10_000]
    for n in sizes:
        for m in (8, 64, 512):
            demands, devices = instance(n, m, seed=n * 1000 + m)
            for mode in (SolverUse.NEVER, SolverUse.AUTO):
                print(row("random", demands, devices, mode), flush=True)
            if n * m <= 64_000:
                print(row("random", demands, devices, SolverUse.ALWAYS), flush=True)
    if args.tight:
        for n, m in ((40, 8), (100, 8), (400, 64)):
            for seed in range(3):
                demands, devices = tight_instance(n, m, seed)
                for mode in (SolverUse.NEVER, SolverUse.AUTO):
                    print(row(f"tight#{seed}", demands, devices, mode), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
