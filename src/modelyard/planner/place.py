"""``place(demands, devices, current) -> Plan``: where every model version goes.

Contract (checked by property tests):
- every device's placed bytes stay within its budget (free memory less the headroom share);
- a version pinned with ``devices:`` only lands on those devices;
- the replicas of one version land on distinct devices;
- the same inputs always give the same plan (no wall-clock randomness: the solver runs
  single-threaded under a *deterministic* time limit; the wall-clock limit is only a backstop);
- when re-planning, versions in ``current`` stay where they are unless that is impossible.

Strategy (the benchmark in bench/bench_planner.py decided it; see docs/planner.md):
1. Greedy: keep the current placements that still fit, then place the rest largest first on
   the allowed device that is least full (best-balanced first-fit-decreasing). A second greedy
   pass places the most constrained (pinned) versions first, a third ignores ``current``.
2. If greedy leaves a replica out, or the instance is small enough that the solver improves
   balance cheaply, OR-Tools CP-SAT (optional extra ``solver``) searches with the greedy result
   as a hint. Without OR-Tools, a bounded exhaustive search covers small instances.
3. The best candidate wins: most replicas placed, then fewest moves, then lowest peak use.

This module imports no ML framework, web library or grpc; OR-Tools is imported lazily.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelyard.ids import VersionKey
from modelyard.planner import exact, solver
from modelyard.planner.explain import explain
from modelyard.planner.plan import (
    Assignment,
    Device,
    DeviceUsage,
    ModelDemand,
    Plan,
    Strategy,
    display_order,
)
from modelyard.planner.problem import Problem, Solution


class SolverUse(enum.Enum):
    """When to call CP-SAT."""

    AUTO = "auto"  # when greedy misses a replica, or to polish small instances (see module doc)
    NEVER = "never"  # greedy (and the exact search for small infeasible-looking instances) only
    ALWAYS = "always"  # every instance within ``solver_max_pairs`` (benchmarks use it)


@dataclass(frozen=True, slots=True)
class PlacerOptions:
    """Knobs for ``place``; the defaults are what the benchmark chose."""

    solver: SolverUse = SolverUse.AUTO
    time_limit_s: float = 1.0
    """Wall-clock backstop for one solver call."""
    deterministic_time: float = 0.5
    """CP-SAT's deterministic time limit (roughly seconds on one core), the limit that binds."""
    solver_max_pairs: int = 50_000
    """Skip the solver when (replica unit, allowed device) pairs exceed this: too slow to help."""
    polish_max_pairs: int = 2_000
    """In AUTO, also run the solver on feasible greedy plans up to this many pairs."""
    exact_max_nodes: int = 200_000
    """Node budget of the exhaustive search used when OR-Tools is not installed."""


def place(
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    current: Mapping[VersionKey, Sequence[str]] | None = None,
    *,
    headroom_fraction: float = 0.05,
    options: PlacerOptions | None = None,
) -> Plan:
    """Plan ``demands`` onto ``devices``; never raises for lack of room (see ``Plan.feasible``).

    ``current`` maps versions to the devices they are on now; ``devices[i].free_bytes`` must not
    count the memory those versions use (it is theirs to keep). Demands must have distinct keys;
    pins may name devices that are not in ``devices`` (such a pin allows nothing).
    """
    opts = options or PlacerOptions()
    if not 0.0 <= headroom_fraction < 1.0:
        raise ValueError(f"headroom_fraction must be in [0, 1), got {headroom_fraction}")
    keys = [d.key for d in demands]
    if len(set(keys)) != len(keys):
        raise ValueError("demands must have distinct keys")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError("devices must have distinct names")

    problem = Problem.build(demands, devices, current or {}, headroom_fraction)
    best = _greedy_candidates(problem)
    strategy = Strategy.GREEDY
    pairs = problem.pair_count()
    want_solver = opts.solver is SolverUse.ALWAYS or (
        opts.solver is SolverUse.AUTO
        and (not best.complete(problem) or pairs <= opts.polish_max_pairs)
    )
    solved: Solution | None = None
    if want_solver and pairs <= opts.solver_max_pairs and solver.available():
        solved = solver.solve(
            problem, hint=best, time_limit_s=opts.time_limit_s, det_time=opts.deterministic_time
        )
        if solved is not None and _rank(problem, solved) < _rank(problem, best):
            best, strategy = solved, Strategy.SOLVER
    if not best.complete(problem) and solved is None:
        found = exact.search(problem, max_nodes=opts.exact_max_nodes)
        if found is not None:
            best, strategy = found, Strategy.EXACT
    return _to_plan(problem, best, strategy, headroom_fraction)


def _rank(problem: Problem, sol: Solution) -> tuple[int, int, float]:
    """Lower is better: replicas missing, then moves, then peak utilisation."""
    return (problem.total_units() - sol.placed_units(), sol.moves(problem), sol.peak(problem))


def _greedy_candidates(problem: Problem) -> Solution:
    orders = (_largest_first, _most_constrained_first)
    best: Solution | None = None
    for keep in (True, False) if problem.current else (True,):
        for order in orders:
            cand = greedy(problem, order(problem), keep_current=keep)
            if best is None or _rank(problem, cand) < _rank(problem, best):
                best = cand
            if best.complete(problem) and best.moves(problem) == 0:
                return best
    assert best is not None
    return best


def _largest_first(problem: Problem) -> list[int]:
    return sorted(
        range(problem.n), key=lambda i: (-problem.sizes[i], display_order(problem.keys[i]))
    )


def _most_constrained_first(problem: Problem) -> list[int]:
    return sorted(
        range(problem.n),
        key=lambda i: (len(problem.allowed[i]), -problem.sizes[i], display_order(problem.keys[i])),
    )


def greedy(problem: Problem, order: Sequence[int], *, keep_current: bool) -> Solution:
    """Best-balanced first-fit-decreasing over ``order``; keeps ``current`` first if asked.

    Each replica goes to the allowed device with the lowest utilisation that has room and does
    not already hold a replica of the same version. Unpinned versions find that device through a
    heap (O(log devices) per replica in the common case), so 10,000 versions on 512 devices plan
    well inside the 2 s target.
    """
    sol = Solution.empty(problem)
    used, caps, budgets, sizes = sol.used, problem.caps, problem.budgets, problem.sizes
    if keep_current:
        for i in _largest_first(problem):
            for d in problem.current_of[i][: problem.replicas[i]]:
                if d in problem.allowed_set[i] and used[d] + sizes[i] <= budgets[d]:
                    sol.assign(problem, i, d)

    def util(d: int) -> float:
        return used[d] / caps[d] if caps[d] else float("inf")

    heap = [(util(d), d) for d in range(problem.m)]
    heapq.heapify(heap)
    all_devices = problem.m
    for i in order:
        need = problem.replicas[i] - len(sol.assigned[i])
        if need <= 0:
            continue
        size = sizes[i]
        if len(problem.allowed[i]) == all_devices:
            chosen = _pop_fitting(heap, sol, problem, i, need, util)
        else:
            fitting = [
                d
                for d in problem.allowed[i]
                if d not in sol.assigned[i] and used[d] + size <= budgets[d]
            ]
            fitting.sort(key=lambda d: (util(d), d))
            chosen = fitting[:need]
        for d in chosen:
            sol.assign(problem, i, d)
            heapq.heappush(heap, (util(d), d))
    return sol


def _pop_fitting(
    heap: list[tuple[float, int]],
    sol: Solution,
    problem: Problem,
    i: int,
    need: int,
    util: object,
) -> list[int]:
    """Pop up to ``need`` least-utilised devices that fit version ``i``; stale entries (whose
    utilisation changed since they were pushed) are dropped, skipped ones are pushed back."""
    chosen: list[int] = []
    skipped: list[tuple[float, int]] = []
    used, budgets, caps = sol.used, problem.budgets, problem.caps
    size = problem.sizes[i]
    while heap and len(chosen) < need:
        u, d = heapq.heappop(heap)
        now = used[d] / caps[d] if caps[d] else float("inf")
        if u != now:
            continue  # stale: a fresher entry for d is (or will be) in the heap
        if d in sol.assigned[i] or used[d] + size > budgets[d]:
            skipped.append((u, d))
            continue
        chosen.append(d)
    for entry in skipped:
        heapq.heappush(heap, entry)
    return chosen


def _to_plan(problem: Problem, sol: Solution, strategy: Strategy, headroom: float) -> Plan:
    assignments = tuple(
        Assignment(
            key=problem.keys[i],
            bytes=problem.sizes[i],
            devices=tuple(problem.devices[d].name for d in sorted(sol.assigned[i])),
            wanted=problem.replicas[i],
            source=problem.demands[i].source,
        )
        for i in sorted(range(problem.n), key=lambda i: display_order(problem.keys[i]))
    )
    holders: list[list[VersionKey]] = [[] for _ in range(problem.m)]
    for i in range(problem.n):
        for d in sol.assigned[i]:
            holders[d].append(problem.keys[i])
    usage = tuple(
        DeviceUsage(
            device=problem.devices[d],
            budget_bytes=problem.budgets[d],
            used_bytes=sol.used[d],
            models=tuple(sorted(holders[d], key=display_order)),
        )
        for d in range(problem.m)
    )
    plan = Plan(
        assignments=assignments,
        devices=usage,
        headroom_fraction=headroom,
        strategy=strategy,
        moves=sol.moves(problem),
    )
    if plan.feasible:
        return plan
    return Plan(
        assignments=plan.assignments,
        devices=plan.devices,
        headroom_fraction=headroom,
        strategy=strategy,
        moves=plan.moves,
        explanation=explain(problem.demands, plan),
    )
