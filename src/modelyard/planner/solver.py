"""OR-Tools CP-SAT for placement (the optional ``solver`` extra), imported only when called.

One boolean per (version, allowed device). Constraints: at most ``replicas`` devices per version
(one boolean per device makes replicas distinct), bytes per device within its budget. The
objective is lexicographic through weights: replicas left out, then moves away from ``current``,
then peak utilisation in basis points.

Bytes are counted in a unit: the greatest common divisor of the sizes, which is exact (every
device's load is a multiple of it, so flooring budgets to it loses nothing) and small enough
for CP-SAT's int64 arithmetic on any real input. Only if the totals would still overflow does
the unit grow; then sizes round *up* and budgets *down*, so an answer always fits in bytes.

Determinism: one search worker, a fixed seed and a deterministic time limit, so a given input
gives the same answer on any machine; the wall-clock limit is a backstop only.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from modelyard.planner.problem import Problem, Solution

_BASIS = 10_000  # utilisation resolution: 0.01 %


def _unit(problem: Problem) -> int:
    unit = math.gcd(*problem.sizes) or 1
    total = sum(s * r for s, r in zip(problem.sizes, problem.replicas, strict=True))
    limit = 2**62 // (_BASIS * 4)  # room for _BASIS * load and peak * capacity in int64
    while total // unit > limit or max(problem.caps, default=0) // unit > limit:
        unit *= 2
    return unit


def available() -> bool:
    """True when OR-Tools can be imported (``pip install 'modelyard[solver]'``)."""
    try:
        importlib.import_module("ortools.sat.python.cp_model")
    except ImportError:
        return False
    return True


def solve(
    problem: Problem,
    *,
    hint: Solution | None,
    time_limit_s: float,
    det_time: float,
) -> Solution | None:
    """The best placement CP-SAT finds within the limits, or None if it found none at all.

    The result may be partial (a version short of replicas) when nothing complete exists or
    none was found in time; ``place`` compares it with the greedy result and keeps the better.
    """
    cp_model: Any = importlib.import_module("ortools.sat.python.cp_model")
    model = cp_model.CpModel()
    unit = _unit(problem)
    sizes = [math.ceil(s / unit) for s in problem.sizes]
    budgets = [b // unit for b in problem.budgets]
    # Utilisation is compared in bytes when int64 allows, so devices of different sizes are
    # balanced exactly; otherwise in units (capacities rounded down).
    in_bytes = (
        _BASIS
        * (sum(problem.sizes) * max(problem.replicas, default=1) + max(problem.caps, default=0))
        < 2**62
    )
    scale = unit if in_bytes else 1
    caps = list(problem.caps) if in_bytes else [max(1, c // unit) for c in problem.caps]

    x: dict[tuple[int, int], Any] = {}
    for i in range(problem.n):
        for d in problem.allowed[i]:
            if sizes[i] <= budgets[d]:
                x[i, d] = model.NewBoolVar(f"x{i}_{d}")
    per_version: list[list[Any]] = [[] for _ in range(problem.n)]
    per_device: list[list[tuple[int, Any]]] = [[] for _ in range(problem.m)]
    for (i, d), var in x.items():
        per_version[i].append(var)
        per_device[d].append((sizes[i], var))
    for i in range(problem.n):
        if per_version[i]:
            model.Add(sum(per_version[i]) <= problem.replicas[i])
    peak = model.NewIntVar(0, _BASIS, "peak")
    for d in range(problem.m):
        if not per_device[d]:
            continue
        load = sum(s * v for s, v in per_device[d])
        model.Add(load <= budgets[d])
        model.Add(_BASIS * scale * load <= peak * caps[d])

    placed = sum(x.values())
    kept = [
        x[i, d]
        for i in range(problem.n)
        for d in problem.current_of[i][: problem.replicas[i]]
        if (i, d) in x
    ]
    move_weight = _BASIS + 1
    miss_weight = move_weight * (len(kept) + 1)
    # Maximise placed, then kept, then minimise peak: as one weighted sum (see module doc).
    model.Minimize(-miss_weight * placed - move_weight * sum(kept) + peak)

    if hint is not None:
        for (i, d), var in x.items():
            model.AddHint(var, 1 if d in hint.assigned[i] else 0)

    cp = cp_model.CpSolver()
    cp.parameters.num_workers = 1
    cp.parameters.random_seed = 0
    cp.parameters.max_deterministic_time = det_time
    cp.parameters.max_time_in_seconds = time_limit_s
    status = cp.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    sol = Solution.empty(problem)
    for (i, d), var in x.items():
        if cp.BooleanValue(var):
            sol.assign(problem, i, d)
    return sol
