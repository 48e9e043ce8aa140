"""The cluster's nodes: what each one has (one probe per node), and which node a name means.

``probe_nodes`` runs one Ray task on every alive node, pinned there (hard node affinity, no
CPU asked, so a busy node is still probed): the task runs the same probes as the local
inventory (``modelyard.devices.probe``: NVML or torch.cuda for GPUs, psutil for host memory)
on its node and returns the values. Nothing is loaded and no worker starts.

A node is named, in the config's ``node:``, by its Ray node id (or a unique prefix of it, 6 hex
digits at least), its IP when no other node has it, or a custom resource only it has
(``ray start --resources '{"nodeA": 1}'``). Its *label*, what device names and the status API
show, is that custom resource when it has one, else its IP when unique, else the first 8 hex
digits of its id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from modelyard.devices.probe import GpuInfo, HostMemory, probe_gpus, probe_host
from modelyard.errors import ConfigError, Unavailable

_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory", "TPU"})
_BUILTIN_PREFIXES = ("node:", "accelerator_type:", "TPU-")
MIN_ID_PREFIX = 6
NO_HOST = HostMemory(0, 0)
"""The host memory of a node record that was not probed (a liveness look)."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One alive node as Ray and its probe saw it."""

    node_id: str
    """Ray's hex node id."""
    ip: str
    label: str
    """How modelyard names the node (see the module doc)."""
    resources: frozenset[str]
    """Its custom resources (not CPU, GPU, memory or Ray's own ``node:...``)."""
    gpus: tuple[GpuInfo, ...] = ()
    host: HostMemory = NO_HOST


def custom_resources(resources: Mapping[str, float]) -> frozenset[str]:
    """The resource names a user gave the node (``--resources``), not Ray's own."""
    return frozenset(
        name
        for name in resources
        if name not in _BUILTIN_RESOURCES and not name.startswith(_BUILTIN_PREFIXES)
    )


def alive_nodes(ray: ModuleType) -> list[dict[str, Any]]:
    """Ray's records of the nodes alive now (``ray.nodes()``, dead ones left out)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def labelled(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str, frozenset[str]]]:
    """node id -> (ip, label, custom resources) for ``records`` (see the module doc)."""
    ips = [str(r["NodeManagerAddress"]) for r in records]
    custom = {str(r["NodeID"]): custom_resources(r.get("Resources", {})) for r in records}
    counts: dict[str, int] = {}
    for names in custom.values():
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    out: dict[str, tuple[str, str, frozenset[str]]] = {}
    for record, ip in zip(records, ips, strict=True):
        node_id = str(record["NodeID"])
        own = sorted(n for n in custom[node_id] if counts[n] == 1)
        if own:
            label = own[0]
        elif ips.count(ip) == 1:
            label = ip
        else:
            label = node_id[:8]
        out[node_id] = (ip, label, custom[node_id])
    return out


def _probe_here(gpus: bool) -> tuple[tuple[GpuInfo, ...], HostMemory]:
    """Runs on the probed node: its GPUs (when asked: the probe may import torch) and its host
    memory."""
    return (tuple(probe_gpus()) if gpus else ()), probe_host()


def probe_nodes(
    ray: ModuleType, *, gpus: bool = True, timeout_s: float = 60.0
) -> tuple[NodeInfo, ...]:
    """Every alive node with its GPUs and host memory, probed on the node itself. ``gpus``:
    False when no device needs them (declared CPU devices only), as the local inventory skips
    the GPU probe then.

    Unavailable when the cluster has no alive node or a probe does not answer in ``timeout_s``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    records = alive_nodes(ray)
    if not records:
        raise Unavailable("the Ray cluster has no alive node")
    names = labelled(records)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_here)
    refs = {
        node_id: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            name=f"modelyard-probe-{names[node_id][1]}",
        ).remote(gpus)
        for node_id in names
    }
    deadline = time.monotonic() + timeout_s
    found: list[NodeInfo] = []
    for node_id, ref in refs.items():
        ip, label, custom = names[node_id]
        try:
            found_gpus, host = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # GetTimeoutError, a node lost meanwhile: Ray's own types
            raise Unavailable(
                f"node {label} ({node_id[:8]}) did not answer its device probe: {exc}"
            ) from exc
        found.append(NodeInfo(node_id, ip, label, custom, tuple(found_gpus), host))
    return tuple(sorted(found, key=lambda n: n.label))


def find_node(selector: str, nodes: Sequence[NodeInfo]) -> NodeInfo | None:
    """The node ``selector`` names (id, id prefix, unique IP, or custom resource / label);
    None when no alive node matches. ConfigError when it matches more than one."""
    for node in nodes:
        if selector in (node.node_id, node.label):
            return node
    matches = [n for n in nodes if selector in n.resources]
    if not matches:
        matches = [n for n in nodes if n.ip == selector]
    if not matches and len(selector) >= MIN_ID_PREFIX:
        matches = [n for n in nodes if n.node_id.startswith(selector.lower())]
    if len(matches) > 1:
        raise ConfigError(
            f"node {selector!r} matches {len(matches)} nodes "
            f"({', '.join(n.label for n in matches)}); name one: a node id, or a custom "
            f"resource only that node has"
        )
    return matches[0] if matches else None
