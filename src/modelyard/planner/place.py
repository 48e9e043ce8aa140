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
   the allowed device that would be least full after taking it (best-balanced
   first-fit-decreasing). A second pass places the most constrained (pinned) versions first;
   when re-planning, two more ignore ``current``. On the benchmark greedy is within a few % of
   the lower bound on peak utilisation, and CP-SAT polishing never paid for its time.
2. Only if greedy leaves a replica out: a bounded exhaustive search (it solves tight packings
   on many equal devices fast, where CP-SAT did not), then OR-Tools CP-SAT (optional extra
   ``solver``) with the best result so far as a hint.
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

    AUTO = "auto"  # when greedy and the exact search leave a replica out
    NEVER = "never"  # greedy and the bounded exact search only
    ALWAYS = "always"  # every instance within ``solver_max_pairs`` (the benchmark compares)


@dataclass(frozen=True, slots=True)
class PlacerOptions:
    """Knobs for ``place``; the defaults are what the benchmark chose."""

    solver: SolverUse = SolverUse.AUTO
    time_limit_s: float = 1.0
    """Wall-clock backstop for one solver call."""
    deterministic_time: float = 0.5
    """CP-SAT's deterministic time limit (roughly seconds on one core), the limit that binds."""
    solver_max_pairs: int = 50_000
    """Skip the solver when (version, allowed device) pairs exceed this: too slow to help."""
    exact_max_nodes: int = 100_000
    """Node budget of the exhaustive search tried when greedy leaves a replica out."""


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
    if not best.complete(problem):
        found = exact.search(problem, max_nodes=opts.exact_max_nodes)
        if found is not None and _rank(problem, found) < _rank(problem, best):
            best, strategy = found, Strategy.EXACT
    want_solver = opts.solver is SolverUse.ALWAYS or (
        opts.solver is SolverUse.AUTO and not best.complete(problem)
    )
    if want_solver and problem.pair_count() <= opts.solver_max_pairs and solver.available():
        solved = solver.solve(
            problem, hint=best, time_limit_s=opts.time_limit_s, det_time=opts.deterministic_time
        )
        if solved is not None and _rank(problem, solved) < _rank(problem, best):
            best, strategy = solved, Strategy.SOLVER
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

    Each replica goes to the allowed device that would be least full *after* taking it (lowest
    (used + size) / capacity), among those with room that do not already hold a replica of the
    same version. Unpinned versions find that device through one heap per capacity class:
    within a class the least-used device is best, so each replica costs O(classes x log
    devices), and 10,000 versions on 512 devices plan well inside the 2 s target.
    """
    sol = Solution.empty(problem)
    used, budgets, sizes = sol.used, problem.budgets, problem.sizes
    if keep_current:
        for i in _largest_first(problem):
            for d in problem.current_of[i][: problem.replicas[i]]:
                if d in problem.allowed_set[i] and used[d] + sizes[i] <= budgets[d]:
                    sol.assign(problem, i, d)

    classes = _CapacityClasses(problem, sol)
    for i in order:
        need = problem.replicas[i] - len(sol.assigned[i])
        if need <= 0:
            continue
        size = sizes[i]
        if len(problem.allowed[i]) == problem.m:
            chosen = classes.take(i, need)
        else:
            fitting = [
                d
                for d in problem.allowed[i]
                if d not in sol.assigned[i] and used[d] + size <= budgets[d]
            ]
            fitting.sort(key=lambda d: (_after(problem, sol, d, size), d))
            chosen = fitting[:need]
        for d in chosen:
            sol.assign(problem, i, d)
            classes.touch(d)
    return sol


def _after(problem: Problem, sol: Solution, d: int, size: int) -> float:
    cap = problem.caps[d]
    return (sol.used[d] + size) / cap if cap else float("inf")


class _CapacityClasses:
    """Devices grouped by capacity, each group in a heap ordered by bytes used.

    Heap entries are (used, device) snapshots; an entry whose ``used`` no longer matches the
    device is stale and dropped when popped (``touch`` pushes the fresh one).
    """

    def __init__(self, problem: Problem, sol: Solution) -> None:
        self.problem, self.sol = problem, sol
        self.class_of: dict[int, int] = {}
        self.heaps: list[list[tuple[int, int]]] = []
        for d, cap in enumerate(problem.caps):
            if cap not in self.class_of:
                self.class_of[cap] = len(self.heaps)
                self.heaps.append([])
            self.heaps[self.class_of[cap]].append((sol.used[d], d))
        for heap in self.heaps:
            heapq.heapify(heap)
        # Devices of one capacity share a budget unless something else holds memory on some.
        self.uniform = [len({problem.budgets[d] for _, d in heap}) == 1 for heap in self.heaps]

    def touch(self, d: int) -> None:
        heap = self.heaps[self.class_of[self.problem.caps[d]]]
        heapq.heappush(heap, (self.sol.used[d], d))

    def take(self, i: int, need: int) -> list[int]:
        """Up to ``need`` distinct devices for version ``i``, best first (not yet assigned)."""
        chosen: list[int] = []
        for _ in range(need):
            best: int | None = None
            for heap in self.heaps:
                d = self._head(heap, i, chosen)
                if d is not None and (
                    best is None
                    or (_after(self.problem, self.sol, d, self.problem.sizes[i]), d)
                    < (_after(self.problem, self.sol, best, self.problem.sizes[i]), best)
                ):
                    best = d
            if best is None:
                break
            chosen.append(best)
        return chosen

    def _head(self, heap: list[tuple[int, int]], i: int, chosen: list[int]) -> int | None:
        """The least-used device in ``heap`` that fits version ``i``; skipped entries go back."""
        sol, problem = self.sol, self.problem
        size = problem.sizes[i]
        skipped: list[tuple[int, int]] = []
        found: int | None = None
        while heap:
            used, d = heap[0]
            if used != sol.used[d]:
                heapq.heappop(heap)  # stale
                continue
            if used + size > problem.budgets[d] and self.uniform[self.class_of[problem.caps[d]]]:
                break  # same budget everywhere in the class: the others are fuller still
            if d in sol.assigned[i] or d in chosen or used + size > problem.budgets[d]:
                skipped.append(heapq.heappop(heap))
                continue
            found = d
            break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found


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
