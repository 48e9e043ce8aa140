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

Where it runs: in this process, unless TensorFlow was imported here before OR-Tools. TensorFlow
loads its framework library with RTLD_GLOBAL (``tensorflow/python/pywrap_dlopen_global_flags``),
which puts its own copy of protobuf's C++ symbols in the process's global scope; OR-Tools'
``libortools.so``, loaded after it, binds its protobuf calls to that copy (another protobuf
version, another object layout) and CP-SAT dies with SIGSEGV (first in
``RepeatedPtrFieldBase::DestroyProtos`` under ``CpModelProto``'s destructor). OR-Tools loaded
first is safe: TensorFlow then binds its own. So when TensorFlow came first, the model is solved
in a child Python process (``python -I solver.py``, one JSON line per model on stdin), where
OR-Tools is alone; its answer is the same, by the determinism above. The child is started on
the first such solve and kept, so only that solve pays its start-up and the OR-Tools import. This
module imports nothing of modelyard at run time when run as that child, so the child starts fast.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import selectors
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.planner.problem import Problem, Solution

log = logging.getLogger(__name__)

_BASIS = 10_000  # utilisation resolution: 0.01 %
_CP_MODEL = "ortools.sat.python.cp_model"
_CLASHING = ("tensorflow",)
"""Modules that, once imported, make an OR-Tools import in the same process crash (see above)."""
_CHILD_START_S = 120.0
"""Room for the child's start-up (Python and OR-Tools imports) on a loaded machine."""

Spec = dict[str, Any]
"""The model's data as plain JSON values: what the child process receives."""


def available() -> bool:
    """True when OR-Tools can be imported (``pip install 'modelyard[solver]'``)."""
    if _CP_MODEL in sys.modules:
        return True
    import importlib.util

    try:
        return importlib.util.find_spec("ortools.sat.python") is not None
    except ImportError:
        return False


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
    Also None (with a warning logged) when the child process, if one was needed, failed.
    """
    from modelyard.planner.problem import Solution

    spec: Spec = {
        "sizes": list(problem.sizes),
        "replicas": list(problem.replicas),
        "allowed": [list(a) for a in problem.allowed],
        "current_of": [list(c) for c in problem.current_of],
        "budgets": list(problem.budgets),
        "caps": list(problem.caps),
        "hint": None if hint is None else [sorted(a) for a in hint.assigned],
        "time_limit_s": time_limit_s,
        "det_time": det_time,
    }
    assigned = solve_spec(spec) if in_process_safe() else _solve_in_child(spec)
    if assigned is None:
        return None
    sol = Solution.empty(problem)
    for i, devices in enumerate(assigned):
        for d in devices:
            sol.assign(problem, i, d)
    return sol


def in_process_safe() -> bool:
    """False when importing OR-Tools here would crash CP-SAT (TensorFlow was imported first)."""
    return _CP_MODEL in sys.modules or not any(m in sys.modules for m in _CLASHING)


class _Child:
    """One child Python that solves models sent as JSON lines, started on first use and kept,
    so only the first solve pays its start-up and the OR-Tools import. It reads until its stdin
    closes, so it ends with this process, however this process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def solve(self, spec: Spec) -> list[list[int]] | None:
        with self._lock:
            try:
                return self._ask(spec, float(spec["time_limit_s"]) + _CHILD_START_S)
            except (OSError, ValueError, TimeoutError) as exc:
                self._end()
                log.warning("CP-SAT child process failed (%s); placement keeps its plan", exc)
                return None

    def _ask(self, spec: Spec, timeout_s: float) -> list[list[int]] | None:
        if self._proc is None or self._proc.poll() is not None:
            # -I: no user site, no PYTHONPATH, and not this file's folder on sys.path (its
            # siblings' names must not shadow anything): the child needs only OR-Tools.
            self._proc = subprocess.Popen(
                [sys.executable, "-I", __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        proc = self._proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise TimeoutError(f"no answer within {timeout_s:.0f} s")
        line = proc.stdout.readline()
        if not line:
            raise ValueError(f"it exited with {proc.wait()}")
        answer: list[list[int]] | None = json.loads(line)
        return answer

    def _end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()


_CHILD = _Child()


def _solve_in_child(spec: Spec) -> list[list[int]] | None:
    return _CHILD.solve(spec)


def _unit(sizes: list[int], replicas: list[int], caps: list[int]) -> int:
    unit = math.gcd(*sizes) or 1
    total = sum(s * r for s, r in zip(sizes, replicas, strict=True))
    limit = 2**62 // (_BASIS * 4)  # room for _BASIS * load and peak * capacity in int64
    while total // unit > limit or max(caps, default=0) // unit > limit:
        unit *= 2
    return unit


def solve_spec(spec: Spec) -> list[list[int]] | None:
    """Solve in this process: the devices chosen for each version, or None if none found."""
    cp_model: Any = importlib.import_module("ortools.sat.python.cp_model")
    model = cp_model.CpModel()
    sizes_b: list[int] = spec["sizes"]
    replicas: list[int] = spec["replicas"]
    allowed: list[list[int]] = spec["allowed"]
    current_of: list[list[int]] = spec["current_of"]
    caps_b: list[int] = spec["caps"]
    n, m = len(sizes_b), len(caps_b)
    unit = _unit(sizes_b, replicas, caps_b)
    sizes = [math.ceil(s / unit) for s in sizes_b]
    budgets = [b // unit for b in spec["budgets"]]
    # Utilisation is compared in bytes when int64 allows, so devices of different sizes are
    # balanced exactly; otherwise in units (capacities rounded down).
    in_bytes = _BASIS * (sum(sizes_b) * max(replicas, default=1) + max(caps_b, default=0)) < 2**62
    scale = unit if in_bytes else 1
    caps = list(caps_b) if in_bytes else [max(1, c // unit) for c in caps_b]

    x: dict[tuple[int, int], Any] = {}
    for i in range(n):
        for d in allowed[i]:
            if sizes[i] <= budgets[d]:
                x[i, d] = model.NewBoolVar(f"x{i}_{d}")
    per_version: list[list[Any]] = [[] for _ in range(n)]
    per_device: list[list[tuple[int, Any]]] = [[] for _ in range(m)]
    for (i, d), var in x.items():
        per_version[i].append(var)
        per_device[d].append((sizes[i], var))
    for i in range(n):
        if per_version[i]:
            model.Add(sum(per_version[i]) <= replicas[i])
    peak = model.NewIntVar(0, _BASIS, "peak")
    for d in range(m):
        if not per_device[d]:
            continue
        load = sum(s * v for s, v in per_device[d])
        model.Add(load <= budgets[d])
        model.Add(_BASIS * scale * load <= peak * caps[d])

    placed = sum(x.values())
    kept = [x[i, d] for i in range(n) for d in current_of[i][: replicas[i]] if (i, d) in x]
    move_weight = _BASIS + 1
    miss_weight = move_weight * (len(kept) + 1)
    # Maximise placed, then kept, then minimise peak: as one weighted sum (see module doc).
    model.Minimize(-miss_weight * placed - move_weight * sum(kept) + peak)

    hint: list[list[int]] | None = spec["hint"]
    if hint is not None:
        for (i, d), var in x.items():
            model.AddHint(var, 1 if d in hint[i] else 0)

    cp = cp_model.CpSolver()
    cp.parameters.num_workers = 1
    cp.parameters.random_seed = 0
    cp.parameters.max_deterministic_time = spec["det_time"]
    cp.parameters.max_time_in_seconds = spec["time_limit_s"]
    status = cp.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return [[d for d in allowed[i] if (i, d) in x and cp.BooleanValue(x[i, d])] for i in range(n)]


if __name__ == "__main__":  # the child process of ``_Child``: one JSON line in, one out
    for request in sys.stdin:
        print(json.dumps(solve_spec(json.loads(request))), flush=True)
