"""Why a plan leaves replicas out, with names and numbers, and what would make it fit.

Each version that is short of replicas gets one reason, the first that applies:
1. its pins name no known device;
2. it is larger than the budget of every device it may use, even an empty one;
3. it wants more replicas than it has devices with enough budget;
4. otherwise the devices it may use are full of other models (grouped by the device set,
   naming the device with the most room and what fills it).
Then one line compares total need with total budget, and a ``To fit:`` line lists fixes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from modelyard.config.sizes import format_size
from modelyard.planner.plan import Assignment, DeviceUsage, ModelDemand, Plan

_MAX_NAMES = 6  # longer lists end in "and N more"


def explain(demands: Sequence[ModelDemand], plan: Plan) -> str:
    """A multi-line explanation for ``plan``'s short versions; "" when the plan is feasible."""
    short = plan.short
    if not short:
        return ""
    by_key = {d.key: d for d in demands}
    usage = {u.device.name: u for u in plan.devices}
    headroom = plan.headroom_fraction
    lines: list[str] = []
    fixes: list[str] = []
    crowded: dict[tuple[str, ...], list[Assignment]] = {}
    for a in short:
        demand = by_key[a.key]
        allowed = [u for name, u in usage.items() if demand.allows(name)]
        if not allowed:
            lines.append(
                f"{a.key} is pinned to {_names(demand.pins or ())}, none of which is a device "
                f"here; devices: {_names(usage)}"
            )
            fixes.append(f"pin {a.key.model} to existing devices")
            continue
        biggest = min(allowed, key=lambda u: -u.budget_bytes)  # first of the largest
        if a.bytes > biggest.budget_bytes:
            lines.append(
                f"{a.key} needs {_gib(a.bytes)}; the largest device it may use, "
                f"{biggest.device.name}, holds at most {_gib(biggest.budget_bytes)} "
                f"({_gib(biggest.device.capacity_bytes)} less {headroom:.0%} headroom"
                f"{_others(biggest)})"
            )
            fixes.append(_too_big_fix(a, biggest, headroom, pinned=demand.pins is not None))
            continue
        roomy = [u for u in allowed if u.budget_bytes >= a.bytes]
        if len(roomy) < a.wanted:
            lines.append(
                f"{a.key} wants {a.wanted} replicas on distinct devices, but only {len(roomy)} "
                f"device(s) it may use can hold {_gib(a.bytes)}: "
                f"{_names(u.device.name for u in roomy)}"
            )
            fixes.append(f"lower replicas of {a.key.model} to {len(roomy)} or allow more devices")
            continue
        crowded.setdefault(tuple(u.device.name for u in allowed), []).append(a)

    for names, group in crowded.items():
        lines.append(_crowded_line(names, group, usage))
        need = sum(a.bytes * (a.wanted - len(a.devices)) for a in group)
        if len(names) < len(usage):
            fixes.append(
                f"pin {_names(a.key.model for a in group)} to more devices "
                f"(they need {_gib(need)} more on {_names(names)})"
            )
        else:
            fixes.append(f"free or add {_gib(need)} of device memory")

    lines.append(_totals_line(demands, plan))
    need = sum(d.bytes * d.replicas for d in demands)
    have = sum(u.budget_bytes for u in plan.devices)
    free = sum(min(u.device.free_bytes, u.device.capacity_bytes) for u in plan.devices)
    if headroom > 0 and have < need <= free:
        total_cap = sum(u.device.capacity_bytes for u in plan.devices)
        fraction = int((free - need) / total_cap * 1000) / 1000
        fixes.append(f"lower headroom_fraction from {headroom:g} to {fraction:g}")
    fixes.append("remove models, lower their replicas, or give smaller `memory:` values")
    lines.append("To fit: " + "; or ".join(dict.fromkeys(fixes)) + ".")
    return "\n".join(lines)


def _crowded_line(
    names: Sequence[str], group: list[Assignment], usage: dict[str, DeviceUsage]
) -> str:
    roomiest = min((usage[n] for n in names), key=lambda u: u.used_bytes - u.budget_bytes)
    free = roomiest.budget_bytes - roomiest.used_bytes
    need = sum(a.bytes * (a.wanted - len(a.devices)) for a in group)
    where = (
        f"the only device they may use, {roomiest.device.name}"
        if len(names) == 1
        else f"the roomiest of the {len(names)} devices they may use, {roomiest.device.name}"
    )
    if len(group) == 1:
        a = group[0]
        who = f"{a.key} needs {_gib(a.bytes)}"
        where = where.replace("they", "it")
    else:
        who = f"{_names(str(a.key) for a in group)} ({len(group)} versions) need {_gib(need)}"
    fillers = roomiest.models
    after = f" after {_names(str(k) for k in fillers)}" if fillers else ""
    return f"{who}; {where}, has {_gib(free)} free{after} (budget {_gib(roomiest.budget_bytes)})"


def _totals_line(demands: Sequence[ModelDemand], plan: Plan) -> str:
    need = sum(d.bytes * d.replicas for d in demands)
    have = sum(u.budget_bytes for u in plan.devices)
    placed = sum(a.bytes * len(a.devices) for a in plan.assignments)
    if need > have:
        return (
            f"In all, the models need {_gib(need)} and the devices hold {_gib(have)} after "
            f"headroom: {_gib(need - have)} short."
        )
    return (
        f"In all, the models need {_gib(need)} and the devices hold {_gib(have)} after headroom; "
        f"{_gib(have - placed)} stays free because of pins, replicas, or sizes that do not pack."
    )


def _too_big_fix(a: Assignment, biggest: DeviceUsage, headroom: float, *, pinned: bool) -> str:
    options = [
        f"give {a.key.model} a device with at least {_gib(_needed_capacity(a.bytes, headroom))}"
    ]
    if pinned:
        options.append(f"pin {a.key.model} to a bigger device")
    cap = biggest.device.capacity_bytes
    other = cap - min(biggest.device.free_bytes, cap)
    if cap and a.bytes + other <= cap:
        fraction = (cap - other - a.bytes) / cap
        options.append(f"lower headroom_fraction to {int(fraction * 1000) / 1000:g}")
    return " or ".join(options)


def _needed_capacity(size: int, headroom: float) -> int:
    return int(size / (1.0 - headroom)) + 1


def _others(u: DeviceUsage) -> str:
    other = u.device.capacity_bytes - min(u.device.free_bytes, u.device.capacity_bytes)
    return f" and {_gib(other)} used by others" if other > 0 else ""


def _gib(n: int) -> str:
    return format_size(n)


def _names(items: Iterable[object]) -> str:
    names = [str(x) for x in items]
    if len(names) > _MAX_NAMES:
        return ", ".join(names[:_MAX_NAMES]) + f" and {len(names) - _MAX_NAMES} more"
    return ", ".join(names)
