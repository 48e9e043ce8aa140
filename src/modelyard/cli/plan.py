"""``modelyard plan CONFIG [--json]``: where each model would go; loads nothing.

Exit status (``EXIT_*``):

- 0: every replica fits;
- 1: the config cannot be read (a bad key, a missing base path without ``memory:``);
- 2: not every replica fits (the explanation goes to stderr, and into the JSON as
  ``explanation``);
- 3: the rest fits, but some versions cannot be read (a corrupt, truncated or empty artifact, a
  folder in the file's place): they are listed with the reason under "cannot be read" (JSON
  ``unreadable``), are left out of the plan, and ``serve`` starts with them FAILED.

2 wins over 3 when both hold. Artifacts are not needed for models that give ``memory:`` (see
``modelyard.planner.demands``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modelyard.cli.plan_paging import dumps, render_paging
from modelyard.config import load_config
from modelyard.config.sizes import format_size
from modelyard.devices.inventory import build_inventory
from modelyard.errors import ModelyardError
from modelyard.planner.demands import plan_for_config, plan_paging_for_config
from modelyard.planner.plan import DeviceUsage, Plan

EXIT_FITS = 0
EXIT_ERROR = 1
EXIT_DOES_NOT_FIT = 2
EXIT_UNREADABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "exit status: 0 every replica fits; 1 the config cannot be read; 2 not every replica "
        "fits; 3 the rest fits but some versions cannot be read (listed with the reason)"
    )
    parser.add_argument("config", type=Path, help="modelyard YAML config")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if config.paging is not None:  # home devices, resident set, host and disk
            paged = plan_paging_for_config(config, build_inventory(config.devices))
            print(dumps(paged) if args.json else render_paging(paged))
            if not paged.feasible:
                print(f"\nNo plan with paging.\n{paged.explanation}", file=sys.stderr)
                return EXIT_DOES_NOT_FIT
            return EXIT_FITS
        plan = plan_for_config(config, build_inventory(config.devices))
    except ModelyardError as exc:
        print(f"modelyard plan: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2))
    else:
        print(render_table(plan))
    if not plan.feasible:
        print(f"\nNo plan: not every model fits.\n{plan.explanation}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    if plan.unreadable:
        print(
            f"\n{len(plan.unreadable)} version(s) cannot be read; they would be FAILED when "
            "served, and the rest fits:\n"
            + "\n".join(f"  {u.key}: {u.reason}" for u in plan.unreadable),
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    return EXIT_FITS


def render_table(plan: Plan) -> str:
    """A section per device: a heading with used / capacity and % used, then its models with
    their bytes and where the bytes came from (config, measured, estimated)."""
    by_key = {a.key: a for a in plan.assignments}
    width = max((len(str(k)) for k in by_key), default=0)
    lines = [
        f"{len(plan.assignments)} model version(s) on {len(plan.devices)} device(s), "
        f"headroom {plan.headroom_fraction:.0%}, planned by {plan.strategy.value}: "
        + ("fits" if plan.feasible else "DOES NOT FIT"),
    ]
    for usage in plan.devices:
        lines.append("")
        lines.append(_device_heading(usage))
        if not usage.models:
            lines.append("  (empty)")
            continue
        lines.extend(
            f"  {k!s:<{width}}  {format_size(by_key[k].bytes):>10}  {by_key[k].source.value}"
            for k in usage.models
        )
    short = plan.short
    if short:
        lines.append("")
        lines.append("not placed:")
        for a in short:
            missing = a.wanted - len(a.devices)
            lines.append(
                f"  {a.key!s:<{width}}  {format_size(a.bytes):>10}  "
                f"{missing} of {a.wanted} replica(s)"
            )
    if plan.unreadable:
        lines.append("")
        lines.append("cannot be read (FAILED when served):")
        lines.extend(f"  {u.key}  {u.reason}" for u in plan.unreadable)
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _device_heading(u: DeviceUsage) -> str:
    d = u.device
    where = str(d.target)
    absent = ", not on this machine" if not d.present else ""
    return (
        f"{d.name} ({where}{absent}): {format_size(u.used_bytes)} of "
        f"{format_size(d.capacity_bytes)} used ({u.utilisation:.1%}), "
        f"{format_size(u.budget_bytes)} plannable"
    )


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain JSON values (the ``--json`` output)."""
    by_key = {a.key: a for a in plan.assignments}
    return {
        "feasible": plan.feasible,
        "strategy": plan.strategy.value,
        "headroom_fraction": plan.headroom_fraction,
        "moves": plan.moves,
        "devices": [
            {
                "name": u.device.name,
                "kind": u.device.kind.value,
                "index": u.device.index,
                "present": u.device.present,
                "capacity_bytes": u.device.capacity_bytes,
                "free_bytes": u.device.free_bytes,
                "budget_bytes": u.budget_bytes,
                "used_bytes": u.used_bytes,
                "used_fraction": round(u.utilisation, 6),
                "models": [
                    {
                        "model": k.model,
                        "version": k.version,
                        "bytes": by_key[k].bytes,
                        "source": by_key[k].source.value,
                    }
                    for k in u.models
                ],
            }
            for u in plan.devices
        ],
        "not_placed": [
            {
                "model": a.key.model,
                "version": a.key.version,
                "bytes": a.bytes,
                "replicas_wanted": a.wanted,
                "replicas_placed": len(a.devices),
            }
            for a in plan.short
        ],
        "unreadable": [
            {"model": u.key.model, "version": u.key.version, "reason": u.reason}
            for u in plan.unreadable
        ],
        "explanation": plan.explanation,
        "notes": list(plan.notes),
    }
