"""``modelyard plan`` for a config with ``paging:``: home devices, the resident set, what is on
each device at start, host use and what pages to disk (exit codes as ``cli.plan``)."""

from __future__ import annotations

import json
from typing import Any

from modelyard.config.sizes import format_size
from modelyard.planner.paging import PagingPlan


def render_paging(result: PagingPlan) -> str:
    """A section per device (resident versions, the versions it is home to, which of them are
    on it at start), then host memory and disk."""
    plan = result.plan
    by_key = {a.key: a for a in plan.assignments}
    versions = len(plan.assignments)
    lines = [
        f"{versions} model version(s) on {len(result.devices)} device(s) with paging, headroom "
        f"{plan.headroom_fraction:.0%}: " + ("fits" if result.feasible else "DOES NOT FIT"),
        f"resident (never paged out): {len(result.resident)} version(s)"
        + (": " + ", ".join(sorted(str(k) for k in result.resident)) if result.resident else ""),
    ]
    for d in result.devices:
        lines.append("")
        lines.append(
            f"{d.device.name} ({d.device.target}): budget {format_size(d.budget_bytes)}, "
            f"resident {format_size(d.resident_bytes)}, room for paging "
            f"{format_size(d.room_bytes)}; home to {len(d.homes)} paged version(s), "
            f"{format_size(d.home_bytes)}"
        )
        for key in d.resident:
            lines.append(f"  {key!s:<24} {format_size(by_key[key].bytes):>10}  resident")
        start = set(d.at_start)
        for key in d.homes:
            where = "on device at start" if key in start else "paged"
            lines.append(f"  {key!s:<24} {format_size(by_key[key].bytes):>10}  home, {where}")
    lines.append("")
    lines.append(
        f"host memory: {format_size(result.host_bytes)} of "
        f"{format_size(result.host_memory_bytes)} at start ({len(result.host)} version(s))"
    )
    if result.disk:
        shown = ", ".join(str(k) for k in result.disk[:12])
        more = f" and {len(result.disk) - 12} more" if len(result.disk) > 12 else ""
        lines.append(
            f"pages to disk (host memory full): {len(result.disk)} version(s), "
            f"{format_size(result.disk_bytes)}: {shown}{more}"
        )
    else:
        lines.append("pages to disk: nothing (host memory holds every paged version)")
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def paging_to_json(result: PagingPlan) -> dict[str, Any]:
    """The ``--json`` output with paging."""
    by_key = {a.key: a for a in result.plan.assignments}

    def version(key: Any) -> dict[str, Any]:
        return {"model": key.model, "version": key.version, "bytes": by_key[key].bytes}

    return {
        "feasible": result.feasible,
        "paging": True,
        "headroom_fraction": result.plan.headroom_fraction,
        "resident": [version(k) for k in sorted(result.resident)],
        "devices": [
            {
                "name": d.device.name,
                "capacity_bytes": d.device.capacity_bytes,
                "budget_bytes": d.budget_bytes,
                "resident_bytes": d.resident_bytes,
                "room_bytes": d.room_bytes,
                "home_bytes": d.home_bytes,
                "resident": [version(k) for k in d.resident],
                "homes": [{**version(k), "at_start": k in d.at_start} for k in d.homes],
            }
            for d in result.devices
        ],
        "host": {
            "memory_bytes": result.host_memory_bytes,
            "used_bytes": result.host_bytes,
            "versions": [version(k) for k in result.host],
        },
        "disk": {"bytes": result.disk_bytes, "versions": [version(k) for k in result.disk]},
        "explanation": result.explanation,
        "notes": list(result.plan.notes),
    }


def dumps(result: PagingPlan) -> str:
    return json.dumps(paging_to_json(result), indent=2)
