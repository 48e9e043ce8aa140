"""Planning with paging: a home device for every version, the resident set, host use, disk.

With ``paging:`` a set is feasible when (docs/paging.md):

- the ``resident: true`` versions fit their devices as without paging (``place``), and
- every other version fits its *home* device beside that device's resident versions (one at
  a time: it pages in there, evicting colder versions of the same home).

Homes balance bytes: largest first, each replica goes to the allowed device whose paged bytes
would be smallest relative to its room (budget less resident bytes), replicas on distinct
devices. At start every home device holds what fits beside its resident versions, in display
order; the rest is paged: to host memory while ``host_memory`` lasts, then to disk. The host
use counts planned bytes (an upper bound: the host tier holds the artifacts' bytes).

Pure: demands and devices in, a ``PagingPlan`` out; no I/O, no framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.config.sizes import format_size
from modelyard.ids import VersionKey
from modelyard.planner.place import place
from modelyard.planner.plan import (
    Assignment,
    Device,
    DeviceUsage,
    ModelDemand,
    Plan,
    display_order,
)


@dataclass(frozen=True, slots=True)
class PagedDevice:
    """One device under paging: its resident versions, the versions it is home to, and which
    of those are on it at start."""

    device: Device
    budget_bytes: int
    resident: tuple[VersionKey, ...]
    resident_bytes: int
    homes: tuple[VersionKey, ...]
    home_bytes: int
    at_start: tuple[VersionKey, ...]
    at_start_bytes: int

    @property
    def room_bytes(self) -> int:
        """What paged versions may use here: the budget less the resident versions."""
        return max(0, self.budget_bytes - self.resident_bytes)


@dataclass(frozen=True, slots=True)
class PagingPlan:
    """The planner's answer with paging.

    ``plan`` has every version's home devices and its real bytes (what ``modelyard plan``
    shows); ``booking_plan()`` is what the controller books (paged versions at 0 bytes: the
    pager, not the book, keeps their device within budget).
    """

    plan: Plan
    resident: frozenset[VersionKey]
    devices: tuple[PagedDevice, ...]
    host_memory_bytes: int
    host: tuple[VersionKey, ...]
    """Paged at start into host memory."""
    host_bytes: int
    disk: tuple[VersionKey, ...]
    """Paged at start to disk: host memory was full."""
    disk_bytes: int
    explanation: str = ""

    @property
    def feasible(self) -> bool:
        return not self.explanation

    def bytes_of(self, key: VersionKey) -> int:
        for a in self.plan.assignments:
            if a.key == key:
                return a.bytes
        return 0

    def booking_plan(self) -> Plan:
        """``plan`` with the paged versions at 0 bytes, and each device using its resident
        bytes: the book the controller keeps (``lifecycle.placement``)."""
        assignments = tuple(
            a if a.key in self.resident else dataclasses.replace(a, bytes=0)
            for a in self.plan.assignments
        )
        by_name = {d.device.name: d for d in self.devices}
        usage = tuple(
            dataclasses.replace(u, used_bytes=by_name[u.device.name].resident_bytes)
            for u in self.plan.devices
        )
        return dataclasses.replace(self.plan, assignments=assignments, devices=usage)


def plan_paging(
    demands: Sequence[ModelDemand],
    devices: Sequence[Device],
    *,
    resident: frozenset[str],
    host_memory_bytes: int,
    headroom_fraction: float = 0.05,
) -> PagingPlan:
    """Plan ``demands`` on ``devices`` with paging; ``resident`` names the resident models.

    Never raises for lack of room: ``PagingPlan.feasible`` and ``explanation`` say why not.
    """
    fixed = [d for d in demands if d.key.model in resident]
    paged = [d for d in demands if d.key.model not in resident]
    base = place(fixed, devices, headroom_fraction=headroom_fraction)
    resident_keys = frozenset(d.key for d in fixed)
    problems: list[str] = []
    if not base.feasible:
        problems.append(
            "the resident set does not fit (resident: true versions are never paged out, so "
            "they must fit their devices all at once):\n"
            + base.explanation
            + "\nTo fit: set resident: false on some of "
            + ", ".join(sorted({d.key.model for d in fixed}))
        )
    usage = {u.device.name: u for u in base.devices}
    room = {n: max(0, u.budget_bytes - u.used_bytes) for n, u in usage.items()}
    load = dict.fromkeys(room, 0)
    homes: dict[VersionKey, list[str]] = {}
    order = sorted(paged, key=lambda d: (-d.bytes, display_order(d.key)))
    for demand in order:
        chosen: list[str] = []
        for _ in range(demand.replicas):
            allowed = [
                n for n in room if demand.allows(n) and n not in chosen and room[n] >= demand.bytes
            ]
            if not allowed:
                break
            # Least paged bytes per byte of room after taking it; ties: the roomiest, then name.
            best = min(
                allowed, key=lambda n: ((load[n] + demand.bytes) / max(1, room[n]), -room[n], n)
            )
            chosen.append(best)
            load[best] += demand.bytes
        homes[demand.key] = chosen
        if len(chosen) < demand.replicas:
            problems.append(_no_home(demand, chosen, usage, room))
    by_key = {d.key: d for d in demands}
    paged_devices: list[PagedDevice] = []
    start_device: dict[str, list[VersionKey]] = {n: [] for n in room}
    left: list[VersionKey] = []
    for demand in sorted(paged, key=lambda d: display_order(d.key)):
        placed_all = True
        for name in homes[demand.key]:
            used = sum(by_key[k].bytes for k in start_device[name])
            if used + demand.bytes <= room[name]:
                start_device[name].append(demand.key)
            else:
                placed_all = False
        if not placed_all or not homes[demand.key]:
            left.append(demand.key)
    host: list[VersionKey] = []
    disk: list[VersionKey] = []
    host_used = 0
    for key in left:
        size = by_key[key].bytes
        if host_used + size <= host_memory_bytes:
            host.append(key)
            host_used += size
        else:
            disk.append(key)
    for name, u in usage.items():
        own = sorted((k for k, ns in homes.items() if name in ns), key=display_order)
        paged_devices.append(
            PagedDevice(
                device=u.device,
                budget_bytes=u.budget_bytes,
                resident=u.models,
                resident_bytes=u.used_bytes,
                homes=tuple(own),
                home_bytes=sum(by_key[k].bytes for k in own),
                at_start=tuple(start_device[name]),
                at_start_bytes=sum(by_key[k].bytes for k in start_device[name]),
            )
        )
    assignments = tuple(
        sorted(
            (
                *(a for a in base.assignments),
                *(
                    Assignment(d.key, d.bytes, tuple(homes[d.key]), d.replicas, d.source)
                    for d in paged
                ),
            ),
            key=lambda a: display_order(a.key),
        )
    )
    plan_devices = tuple(
        DeviceUsage(
            device=p.device,
            budget_bytes=p.budget_bytes,
            used_bytes=p.resident_bytes + p.at_start_bytes,
            models=tuple(sorted((*p.resident, *p.homes), key=display_order)),
        )
        for p in paged_devices
    )
    explanation = "\n".join(problems)
    plan = dataclasses.replace(
        base, assignments=assignments, devices=plan_devices, explanation=explanation
    )
    return PagingPlan(
        plan=plan,
        resident=resident_keys,
        devices=tuple(paged_devices),
        host_memory_bytes=host_memory_bytes,
        host=tuple(host),
        host_bytes=host_used,
        disk=tuple(disk),
        disk_bytes=sum(by_key[k].bytes for k in disk),
        explanation=explanation,
    )


def paging_hint(plan: Plan, demands: Sequence[ModelDemand]) -> str:
    """For a set that does not fit without paging: the line that suggests ``paging:``, when
    paging would make it fit (every short version fits, alone, a device it may use); else ""."""
    by_key = {d.key: d for d in demands}
    budgets = {u.device.name: u.budget_bytes for u in plan.devices}
    for a in plan.short:
        demand = by_key.get(a.key)
        if demand is None:
            return ""
        roomy = [n for n, b in budgets.items() if demand.allows(n) and b >= demand.bytes]
        if len(roomy) < demand.replicas:
            return ""
    return (
        "Or turn on paging to serve more models than the devices hold: add a top-level "
        "`paging: {host_memory: <size>}` block (docs/paging.md); each version then needs only "
        "to fit its device beside the resident: true models, and cold versions wait in host "
        "memory or on disk until a request pages them in."
    )


def _no_home(
    demand: ModelDemand, chosen: list[str], usage: dict[str, DeviceUsage], room: dict[str, int]
) -> str:
    allowed = [n for n in room if demand.allows(n)]
    if not allowed:
        pins = ", ".join(demand.pins or ())
        return f"{demand.key} is pinned to devices that are not here: {pins}"
    roomiest = max(allowed, key=lambda n: (room[n], n))
    u = usage[roomiest]
    if len(chosen) and demand.replicas > len(chosen):
        return (
            f"{demand.key} wants {demand.replicas} replicas on distinct devices, but only "
            f"{len(chosen)} device(s) it may use have {format_size(demand.bytes)} of room beside "
            f"their resident models; lower replicas of {demand.key.model}"
        )
    return (
        f"{demand.key} needs {format_size(demand.bytes)}; the roomiest device it may use, "
        f"{roomiest}, has {format_size(room[roomiest])} beside its resident models "
        f"({format_size(u.budget_bytes)} budget less {format_size(u.used_bytes)} resident); "
        f"To fit: a bigger device, fewer resident models there, or a smaller {demand.key.model}"
    )
