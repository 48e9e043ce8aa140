"""Bounded exhaustive search: finds a complete placement of a small instance if one exists.

Used when greedy leaves a replica out and OR-Tools is not installed. Depth-first over replica
units, largest first; a version's replicas take devices in increasing index order (replicas
are interchangeable, so other orders repeat work), and devices that are interchangeable at a
node (same room left, same capacity, same set of versions allowed on them) are tried once.
"""

from __future__ import annotations

from modelyard.planner.problem import Problem, Solution


class _OutOfNodes(Exception):
    pass


def search(problem: Problem, *, max_nodes: int) -> Solution | None:
    """A complete placement, or None when there is none or ``max_nodes`` ran out first.

    Ignores ``current``: it is a last resort for feasibility, not for stability.
    """
    units = sorted(
        (i for i in range(problem.n) for _ in range(problem.replicas[i])),
        key=lambda i: (-problem.sizes[i], len(problem.allowed[i]), problem.keys[i]),
    )
    # Devices allowed to exactly the same versions are interchangeable when equally full.
    allowers: list[list[int]] = [[] for _ in range(problem.m)]
    for i in range(problem.n):
        for d in problem.allowed[i]:
            allowers[d].append(i)
    signature = [(problem.caps[d], tuple(allowers[d])) for d in range(problem.m)]
    # Devices also differ by which multi-replica versions they hold (replicas must be distinct).
    multi = [i for i in range(problem.n) if problem.replicas[i] > 1]
    sol = Solution.empty(problem)
    nodes = 0

    def dfs(k: int) -> bool:
        nonlocal nodes
        if k == len(units):
            return True
        nodes += 1
        if nodes > max_nodes:
            raise _OutOfNodes
        i = units[k]
        floor = max(sol.assigned[i], default=-1)  # replicas in increasing device order
        size = problem.sizes[i]
        tried: set[tuple[object, ...]] = set()
        for d in problem.allowed[i]:
            if d <= floor or sol.used[d] + size > problem.budgets[d]:
                continue
            held = tuple(j for j in multi if d in sol.assigned[j])
            state = (problem.budgets[d] - sol.used[d], signature[d], held)
            if state in tried:
                continue
            tried.add(state)
            sol.assign(problem, i, d)
            if dfs(k + 1):
                return True
            sol.unassign(problem, i, d)
        return False

    try:
        return sol if dfs(0) else None
    except _OutOfNodes:
        return None
