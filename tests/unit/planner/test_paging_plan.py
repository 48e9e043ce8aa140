"""Planning with paging: homes balance bytes, residents stay, host then disk; explanations."""

from __future__ import annotations

from modelyard.config.schema import DeviceKind
from modelyard.ids import VersionKey
from modelyard.planner import Device, ModelDemand, place
from modelyard.planner.paging import paging_hint, plan_paging

GiB = 2**30


def gpus(n: int, size: int = 15 * GiB) -> list[Device]:
    return [Device(f"gpu{i}", DeviceKind.CUDA, i, size, size) for i in range(n)]


def demands(n: int, size: int = 4 * GiB, **kw: object) -> list[ModelDemand]:
    return [ModelDemand(VersionKey(f"m{i}", 1), size, **kw) for i in range(1, n + 1)]  # type: ignore[arg-type]


def test_twenty_4gib_on_four_15gib_gpus_get_homes_residents_host_and_disk() -> None:
    result = plan_paging(
        demands(20), gpus(4), resident=frozenset({"m1", "m2"}), host_memory_bytes=16 * GiB
    )
    assert result.feasible
    assert result.resident == {VersionKey("m1", 1), VersionKey("m2", 1)}
    # Every version has exactly one home; homes balance the paged bytes per byte of room.
    homes = [a.devices for a in result.plan.assignments]
    assert all(len(h) == 1 for h in homes)
    counts = sorted(len(d.homes) for d in result.devices)
    assert counts == [4, 4, 5, 5]  # the two GPUs with a resident model are home to fewer
    for d in result.devices:
        assert d.resident_bytes + d.at_start_bytes <= d.budget_bytes
        assert len(d.resident) + len(d.at_start) == 3  # 3 x 4 GiB fit in 14.25 GiB
    paged = 20 - 12
    assert len(result.host) == 4
    assert result.host_bytes == 16 * GiB
    assert len(result.disk) == paged - 4
    assert result.disk_bytes == 4 * 4 * GiB


def test_the_booking_plan_counts_only_resident_bytes() -> None:
    result = plan_paging(demands(20), gpus(4), resident=frozenset({"m1"}), host_memory_bytes=0)
    booking = result.booking_plan()
    assert sum(u.used_bytes for u in booking.devices) == 4 * GiB
    assert {a.key: a.bytes for a in booking.assignments}[VersionKey("m1", 1)] == 4 * GiB
    assert {a.key: a.bytes for a in booking.assignments}[VersionKey("m7", 1)] == 0
    assert booking.feasible


def test_a_resident_set_that_cannot_fit_is_refused_with_the_fix() -> None:
    result = plan_paging(
        demands(5), gpus(1), resident=frozenset({"m1", "m2", "m3", "m4"}), host_memory_bytes=0
    )
    assert not result.feasible
    assert "the resident set does not fit" in result.explanation
    assert "set resident: false on some of m1, m2, m3, m4" in result.explanation


def test_a_version_larger_than_its_room_beside_residents_has_no_home() -> None:
    big = [ModelDemand(VersionKey("big", 1), 12 * GiB)]
    result = plan_paging(
        [*demands(1), *big], gpus(1), resident=frozenset({"m1"}), host_memory_bytes=0
    )
    assert not result.feasible
    assert "big:1 needs 12.0 GiB" in result.explanation
    assert "beside its resident models" in result.explanation


def test_replicas_get_homes_on_distinct_devices() -> None:
    result = plan_paging(demands(6, replicas=2), gpus(3), resident=frozenset(), host_memory_bytes=0)
    assert result.feasible
    assert all(len(set(a.devices)) == 2 for a in result.plan.assignments)


def test_without_paging_the_refusal_suggests_paging_only_when_it_would_help() -> None:
    fits_alone = demands(20)
    plan = place(fits_alone, gpus(4))
    assert not plan.feasible
    assert "paging: {host_memory" in paging_hint(plan, fits_alone)
    too_big = [ModelDemand(VersionKey("huge", 1), 20 * GiB)]
    plan = place(too_big, gpus(4))
    assert paging_hint(plan, too_big) == ""
