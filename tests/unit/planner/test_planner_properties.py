"""Property tests: every plan keeps capacity, pins, replica distinctness and headroom, and on
small instances the planner finds a complete placement whenever brute force finds one."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.config.schema import DeviceKind
from modelyard.ids import VersionKey
from modelyard.planner import Device, ModelDemand, PlacerOptions, Plan, SolverUse, place

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = [SolverUse.AUTO, SolverUse.NEVER]  # with CP-SAT, and greedy + exact search only


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[ModelDemand], list[Device], float]:
    m = draw(st.integers(1, 3))
    devices = []
    for j in range(m):
        cap = draw(st.integers(0, 40))
        free = draw(st.integers(0, cap))
        devices.append(Device(f"d{j}", DeviceKind.CPU, j, cap, free))
    names = [d.name for d in devices] + ["ghost"]  # a pin may name a device that is not there
    demands = []
    for i in range(draw(st.integers(0, 5))):
        pins = draw(st.none() | st.lists(st.sampled_from(names), min_size=1, unique=True))
        demands.append(
            ModelDemand(
                key=VersionKey(f"m{i}", 1),
                bytes=draw(st.integers(0, 20)),
                pins=None if pins is None else tuple(pins),
                replicas=draw(st.integers(1, 2)),
            )
        )
    headroom = draw(st.sampled_from([0.0, 0.1, 0.25]))
    return demands, devices, headroom


def budget(device: Device, headroom: float) -> int:
    return max(
        0,
        min(device.free_bytes, device.capacity_bytes) - math.ceil(device.capacity_bytes * headroom),
    )


def check_invariants(
    plan: Plan, demands: Sequence[ModelDemand], devices: Sequence[Device], headroom: float
) -> None:
    by_key = {d.key: d for d in demands}
    used = {d.name: 0 for d in devices}
    assert {a.key for a in plan.assignments} == set(by_key)
    for a in plan.assignments:
        demand = by_key[a.key]
        assert len(set(a.devices)) == len(a.devices), f"replicas of {a.key} share a device"
        assert len(a.devices) <= demand.replicas
        for name in a.devices:
            assert demand.pins is None or name in demand.pins, f"{a.key} broke its pin"
            used[name] += demand.bytes
    for d in devices:
        assert used[d.name] <= budget(d, headroom), f"{d.name} over budget or headroom"
    for u in plan.devices:
        assert u.used_bytes == used[u.device.name]
    assert plan.feasible == all(len(a.devices) == by_key[a.key].replicas for a in plan.assignments)
    assert bool(plan.explanation) == (not plan.feasible)


def brute_force_fits(
    demands: Sequence[ModelDemand], devices: Sequence[Device], headroom: float
) -> bool:
    choices = []
    for dem in demands:
        allowed = [j for j, d in enumerate(devices) if dem.allows(d.name)]
        choices.append(list(itertools.combinations(allowed, dem.replicas)))
    budgets = [budget(d, headroom) for d in devices]
    for combo in itertools.product(*choices):
        used = [0] * len(devices)
        for dem, chosen in zip(demands, combo, strict=True):
            for j in chosen:
                used[j] += dem.bytes
        if all(u <= b for u, b in zip(used, budgets, strict=True)):
            return True
    return False


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(instances())
def test_every_plan_respects_capacity_pins_replicas_and_headroom(
    mode: SolverUse, instance: tuple[list[ModelDemand], list[Device], float]
) -> None:
    demands, devices, headroom = instance
    plan = place(demands, devices, headroom_fraction=headroom, options=PlacerOptions(solver=mode))
    check_invariants(plan, demands, devices, headroom)


@pytest.mark.parametrize("mode", MODES)
@SETTINGS
@given(instances())
def test_planner_finds_a_placement_whenever_brute_force_does(
    mode: SolverUse, instance: tuple[list[ModelDemand], list[Device], float]
) -> None:
    demands, devices, headroom = instance
    plan = place(demands, devices, headroom_fraction=headroom, options=PlacerOptions(solver=mode))
    assert plan.feasible == brute_force_fits(demands, devices, headroom)


@SETTINGS
@given(instances(), st.data())
def test_replanning_keeps_a_placement_that_still_fits_and_is_deterministic(
    instance: tuple[list[ModelDemand], list[Device], float], data: st.DataObject
) -> None:
    demands, devices, headroom = instance
    first = place(demands, devices, headroom_fraction=headroom)
    assert place(demands, devices, headroom_fraction=headroom) == first
    # Re-plan with one more model: nothing that was placed moves unless it must.
    extra = ModelDemand(VersionKey("new", 1), data.draw(st.integers(0, 10)))
    again = place([*demands, extra], devices, first.placement(), headroom_fraction=headroom)
    check_invariants(again, [*demands, extra], devices, headroom)
    room = [budget(d, headroom) - u.used_bytes for d, u in zip(devices, first.devices, strict=True)]
    if first.feasible and any(r >= extra.bytes for r in room):
        assert again.feasible
        assert again.moves == 0
        assert {k: again.devices_of(k) for k in first.placement()} == first.placement()
