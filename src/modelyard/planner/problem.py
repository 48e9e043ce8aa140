"""The planning problem in index form, shared by the greedy, exact and CP-SAT searches.

``Problem`` is an immutable snapshot built once per ``place`` call: versions and devices become
integer indices so the searches work on lists, not names. ``Solution`` is the one mutable working
object: a search owns its Solution and nothing else sees it until ``place`` turns it into a Plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelyard.devices import Device
from modelyard.ids import VersionKey
from modelyard.planner.plan import ModelDemand


@dataclass(frozen=True, slots=True)
class Problem:
    """Demands ``0..n-1`` and devices ``0..m-1`` with budgets, pins and current placements."""

    demands: tuple[ModelDemand, ...]
    devices: tuple[Device, ...]
    keys: tuple[VersionKey, ...]
    sizes: tuple[int, ...]
    replicas: tuple[int, ...]
    allowed: tuple[tuple[int, ...], ...]
    """Device indices each demand may use, ascending."""
    allowed_set: tuple[frozenset[int], ...]
    current_of: tuple[tuple[int, ...], ...]
    """Device indices each demand is on now (unknown device names dropped)."""
    budgets: tuple[int, ...]
    caps: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.demands)

    @property
    def m(self) -> int:
        return len(self.devices)

    @property
    def current(self) -> bool:
        return any(self.current_of)

    @staticmethod
    def build(
        demands: Sequence[ModelDemand],
        devices: Sequence[Device],
        current: Mapping[VersionKey, Sequence[str]],
        headroom_fraction: float,
    ) -> Problem:
        index = {dev.name: j for j, dev in enumerate(devices)}
        everywhere = tuple(range(len(devices)))
        allowed = tuple(
            everywhere
            if d.pins is None
            else tuple(sorted({index[p] for p in d.pins if p in index}))
            for d in demands
        )
        current_of = tuple(
            tuple(dict.fromkeys(index[n] for n in current.get(d.key, ()) if n in index))
            for d in demands
        )
        return Problem(
            demands=tuple(demands),
            devices=tuple(devices),
            keys=tuple(d.key for d in demands),
            sizes=tuple(d.bytes for d in demands),
            replicas=tuple(d.replicas for d in demands),
            allowed=allowed,
            allowed_set=_shared_sets(allowed),
            current_of=current_of,
            budgets=tuple(dev.budget_bytes(headroom_fraction) for dev in devices),
            caps=tuple(dev.capacity_bytes for dev in devices),
        )

    def total_units(self) -> int:
        """Replicas wanted, over all demands."""
        return sum(self.replicas)

    def pair_count(self) -> int:
        """(demand, allowed device) pairs: the solver's number of boolean variables."""
        return sum(len(a) for a in self.allowed)


def _shared_sets(allowed: tuple[tuple[int, ...], ...]) -> tuple[frozenset[int], ...]:
    # Most demands share one device list (all devices); build each distinct set once.
    sets: dict[tuple[int, ...], frozenset[int]] = {}
    return tuple(sets.setdefault(a, frozenset(a)) if a not in sets else sets[a] for a in allowed)


@dataclass(slots=True)
class Solution:
    """A (partial) placement under construction: device sets per demand and bytes per device."""

    assigned: list[set[int]]
    used: list[int]

    @staticmethod
    def empty(problem: Problem) -> Solution:
        return Solution([set() for _ in range(problem.n)], [0] * problem.m)

    def assign(self, problem: Problem, i: int, d: int) -> None:
        self.assigned[i].add(d)
        self.used[d] += problem.sizes[i]

    def unassign(self, problem: Problem, i: int, d: int) -> None:
        self.assigned[i].discard(d)
        self.used[d] -= problem.sizes[i]

    def placed_units(self) -> int:
        return sum(len(a) for a in self.assigned)

    def complete(self, problem: Problem) -> bool:
        return all(len(a) == r for a, r in zip(self.assigned, problem.replicas, strict=True))

    def moves(self, problem: Problem) -> int:
        """Current replicas (up to the replicas still wanted) that are not kept in place."""
        moved = 0
        for i, before in enumerate(problem.current_of):
            if before:
                kept = sum(1 for d in before if d in self.assigned[i])
                moved += max(0, min(len(before), problem.replicas[i]) - kept)
        return moved

    def peak(self, problem: Problem) -> float:
        """Highest utilisation (used / capacity) over devices."""
        pairs = zip(self.used, problem.caps, strict=True)
        return max((u / c if c else (float("inf") if u else 0.0) for u, c in pairs), default=0.0)
