"""``Placement.lose_devices`` / ``join_devices``: a lost node's versions re-planned onto the
devices left (pure: the planner over values, no processes)."""

from __future__ import annotations

import pytest

from modelyard.config.schema import DeviceKind, ModelConfig
from modelyard.errors import DoesNotFit
from modelyard.ids import VersionKey
from modelyard.lifecycle.placement import Placement
from modelyard.planner import Device, ModelDemand, place

MiB = 2**20


def device(name: str, node: str) -> Device:
    return Device(name, DeviceKind.CPU, 0, 45 * MiB, 45 * MiB, node=node)


DEVICES = [device("a0", "nodeA"), device("a1", "nodeA"), device("b0", "nodeB")]


def test_what_fits_moves_around_the_rest_and_what_does_not_is_named() -> None:
    # 4 slots of 10 MiB per device (5 % headroom): a0 and a1 full, b0 with 3.
    demands = [ModelDemand(VersionKey(f"m{i:02d}", 1), 10 * MiB) for i in range(11)]
    current = {d.key: (("a0", "a1", "b0")[i // 4],) for i, d in enumerate(demands)}
    placement = Placement(place(demands, DEVICES, current))
    assert placement.placed() == current
    # a1 frees one slot, then b0 is lost: one of its three fits on a1, two do not.
    placement.remove(VersionKey("m04", 1))
    moved, unplaced = placement.lose_devices({"b0"})
    assert moved == {VersionKey("m08", 1): ("a1",)}
    assert sorted(unplaced) == [VersionKey("m09", 1), VersionKey("m10", 1)]
    # Nothing that was serving moved, and nothing is left on the lost device.
    after = placement.placed()
    for key, where in current.items():
        if where != ("b0",) and key != VersionKey("m04", 1):
            assert after[key] == where
    assert all("b0" not in where for where in after.values())


def test_a_device_back_is_used_by_the_next_change() -> None:
    demands = [ModelDemand(VersionKey("m", 1), 10 * MiB)]
    placement = Placement(place(demands, DEVICES[2:], {}))
    placement.lose_devices({"b0"})
    model = ModelConfig.model_validate({"name": "n", "base_path": "/nowhere", "memory": "10MiB"})
    demand = ModelDemand(VersionKey("n", 1), 10 * MiB)
    with pytest.raises(DoesNotFit):  # the lost device takes nothing
        placement.add(model, 1, demand)
    placement.join_devices([DEVICES[2]])
    assert placement.add(model, 1, demand) == ("b0",)
