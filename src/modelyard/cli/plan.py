"""``modelyard plan CONFIG [--json]``: where each model would go; loads nothing.

``plan`` reads the config as ``serve`` does (modelyard YAML, a TF Serving ``models.config``
with ``--overlay``, or the TF Serving flags) and makes the same checks before planning
(``modelyard.cli.sources.checked_config``), so a config that ``serve`` would refuse is refused
here with the same message and exit status (``modelyard.cli.exits``):

- 0: every replica fits;
- 1: an internal error;
- 2: the config or a flag is wrong (as ``serve`` says it), or not every replica fits (the
  explanation goes to stderr, and into the JSON as ``explanation``);
- 3: the rest fits, but some versions cannot be read (a corrupt, truncated or empty artifact, a
  folder in the file's place, the wrong format for ``platform:``): they are listed with the
  reason under "cannot be read" (JSON ``unreadable``), are left out of the plan, and ``serve``
  starts with them FAILED.

2 wins over 3 when both hold. The one deliberate difference from ``serve``: a model whose
``base_path`` does not exist yet but gives ``memory:`` is planned as a placeholder (with a
warning that ``serve`` needs the folder), so capacity can be planned before the models exist
(see ``modelyard.planner.demands``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelyard.cli import exits, sources
from modelyard.cli.plan_paging import dumps, render_paging
from modelyard.config.sizes import format_size
from modelyard.devices.inventory import build_inventory
from modelyard.errors import ModelyardError
from modelyard.planner.demands import plan_for_config, plan_paging_for_config
from modelyard.planner.plan import DeviceUsage, Plan

if TYPE_CHECKING:
    from modelyard.cluster.nodes import NodeInfo

EXIT_FITS = exits.ExitCode.OK
EXIT_BAD_INPUT = exits.ExitCode.BAD_INPUT
EXIT_DOES_NOT_FIT = exits.ExitCode.BAD_INPUT
EXIT_UNREADABLE = exits.ExitCode.UNREADABLE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print which model version goes on which device, memory per device, and why; load "
        "nothing. Reads the config as serve does and makes the checks serve makes before "
        "loading, so what plan accepts serve starts."
    )
    parser.epilog = (
        "examples:\n"
        "  modelyard plan modelyard.yaml\n"
        "  modelyard plan modelyard.yaml --json\n"
        "  modelyard plan --model_config_file=/models/models.config --overlay=gpus.yaml\n"
        "  modelyard plan --model_name=half --model_base_path=/models/half\n\n"
        f"{exits.HELP_TEXT}; 3 the rest fits but some versions cannot be read (listed with "
        "the reason; serve starts them FAILED)"
    )
    parser.description = textwrap.fill(parser.description, 79)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sources.add_config_arguments(parser, config_help="modelyard YAML or TF Serving models.config")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--ray-address",
        default=None,
        help="plan over every node of this Ray cluster (auto, host:port or ray://host:port; "
        "overrides the config's cluster: address); starts no worker",
    )


def run(args: argparse.Namespace) -> int:
    if args.config is None and args.model_config_file is None and args.model_base_path is None:
        print(
            "modelyard plan: give a CONFIG (modelyard YAML or a TF Serving models.config), "
            "--model_config_file FILE, or --model_base_path DIR",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    nodes = ""
    try:
        checked = sources.checked_config(args, placeholders=True)
        for warning in checked.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        config = checked.config
        if config.cluster is not None:  # ray is imported only here, only then
            from modelyard.cluster.runtime import cluster_devices

            _, found = cluster_devices(config.cluster, config.devices)
            devices = found.devices
            nodes = render_nodes(found.nodes)
        else:
            devices = build_inventory(config.devices)
        if config.paging is not None:  # home devices, resident set, host and disk
            paged = plan_paging_for_config(config, devices)
            print(dumps(paged) if args.json else render_paging(paged))
            if not paged.feasible:
                print(f"\nNo plan with paging.\n{paged.explanation}", file=sys.stderr)
                return EXIT_DOES_NOT_FIT
            return EXIT_FITS
        plan = plan_for_config(config, devices)
    except ModelyardError as exc:
        print(f"modelyard plan: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2))
    else:
        if nodes:
            print(nodes + "\n")
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


def render_nodes(nodes: Sequence[NodeInfo]) -> str:
    """The cluster's nodes, one a line: label, Ray id, IP, GPUs and host memory."""
    lines = [f"{len(nodes)} node(s) in the Ray cluster:"]
    for n in nodes:
        gpus = ", ".join(f"gpu{g.index} {g.name} {format_size(g.total_bytes)}" for g in n.gpus)
        lines.append(
            f"  {n.label}  id {n.node_id[:8]}  {n.ip}  {gpus or 'no GPU'}  "
            f"host {format_size(n.host.total_bytes)}"
        )
    return "\n".join(lines)


def _device_heading(u: DeviceUsage) -> str:
    d = u.device
    where = str(d.target) if d.node is None else f"{d.target} on node {d.node}"
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
                "node": u.device.node,
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
