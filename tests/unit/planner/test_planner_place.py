"""place(): re-planning stability, headroom against memory others hold, balance, explanations."""

from __future__ import annotations

from modelyard.config.schema import DeviceKind
from modelyard.ids import VersionKey
from modelyard.planner import Device, ModelDemand, PlacerOptions, SolverUse, Strategy, place

GiB = 2**30


def gpus(n: int, size: int = 16 * GiB, free: int | None = None) -> list[Device]:
    return [
        Device(f"gpu{i}", DeviceKind.CUDA, i, size, size if free is None else free)
        for i in range(n)
    ]


def demand(name: str, gib: float, **kw: object) -> ModelDemand:
    return ModelDemand(VersionKey(name, 1), int(gib * GiB), **kw)  # type: ignore[arg-type]


def test_replanning_with_a_new_model_moves_nothing_already_placed() -> None:
    devices = gpus(3)
    first = place([demand(f"m{i}", 3) for i in range(6)], devices)
    again = place(
        [demand(f"m{i}", 3) for i in range(6)] + [demand("new", 5)], devices, first.placement()
    )
    assert again.feasible
    assert again.moves == 0
    assert {k: v for k, v in again.placement().items() if k.model != "new"} == first.placement()


def test_replanning_moves_only_what_must_move_when_a_model_grows() -> None:
    devices = gpus(2, size=10 * GiB)
    current = {VersionKey("a", 1): ("gpu0",), VersionKey("b", 1): ("gpu0",)}
    # b grew from 4 to 6 GiB; a (4 GiB) and b no longer both fit on gpu0 (9.5 GiB plannable).
    plan = place([demand("a", 4), demand("b", 6)], devices, current)
    assert plan.feasible
    assert plan.moves == 1
    assert plan.devices_of(VersionKey("a", 1)) == ("gpu0",) or plan.devices_of(
        VersionKey("b", 1)
    ) == ("gpu0",)


def test_headroom_is_kept_on_top_of_memory_others_hold() -> None:
    # 16 GiB GPU with 10 GiB free (6 GiB held by another process), 10 % headroom -> 8.4 GiB.
    devices = gpus(1, free=10 * GiB)
    assert place([demand("a", 8.4)], devices, headroom_fraction=0.1).feasible
    refused = place([demand("a", 8.5)], devices, headroom_fraction=0.1)
    assert not refused.feasible
    assert "6.0 GiB used by others" in refused.explanation


def test_memory_is_balanced_across_devices_of_different_sizes() -> None:
    devices = [*gpus(1, size=40 * GiB), *gpus(1, size=10 * GiB)]
    devices[1] = Device("gpu1", DeviceKind.CUDA, 1, 10 * GiB, 10 * GiB)
    plan = place([demand(f"m{i}", 1) for i in range(25)], devices)
    used = {u.device.name: u.utilisation for u in plan.devices}
    assert abs(used["gpu0"] - used["gpu1"]) < 0.11  # both about half full, not gpu0 first


def test_too_many_replicas_for_the_devices_that_fit_is_explained() -> None:
    devices = [*gpus(2, size=16 * GiB), Device("small", DeviceKind.CUDA, 2, 4 * GiB, 4 * GiB)]
    plan = place([demand("r", 6, replicas=3)], devices)
    assert not plan.feasible
    assert plan.devices_of(VersionKey("r", 1)) == ("gpu0", "gpu1")  # what fits is still placed
    assert "wants 3 replicas on distinct devices, but only 2" in plan.explanation


def test_pin_to_a_device_that_does_not_exist_is_explained() -> None:
    plan = place([demand("p", 1, pins=("gpu9",))], gpus(2))
    assert not plan.feasible
    assert "pinned to gpu9, none of which is a device here" in plan.explanation


def test_solver_rescues_a_packing_that_greedy_misses() -> None:
    # Two 6 GiB devices (no headroom): 3+3 and 2+2+2 fit exactly, but balancing greedy puts the
    # two 3s apart, then the 2s, and the last 2 finds 1 GiB on each device.
    devices = gpus(2, size=6 * GiB)
    demands = [demand("a", 3), demand("b", 3), demand("c", 2), demand("d", 2), demand("e", 2)]
    greedy_only = PlacerOptions(solver=SolverUse.NEVER, exact_max_nodes=0)
    assert not place(demands, devices, headroom_fraction=0.0, options=greedy_only).feasible
    for mode in (SolverUse.AUTO, SolverUse.NEVER):
        plan = place(demands, devices, headroom_fraction=0.0, options=PlacerOptions(solver=mode))
        assert plan.feasible
        assert plan.strategy in (Strategy.SOLVER, Strategy.EXACT)
