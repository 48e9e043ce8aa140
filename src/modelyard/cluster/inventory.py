"""The devices of a cluster: the config's ``devices:`` applied to what each node's probe found.

Rules (the local ones of ``modelyard.devices.inventory``, applied node by node):

- ``devices: auto`` is every GPU of every alive node, named ``<node>/gpuN``; a cluster with no
  GPU at all gets one ``<node>/cpu`` device per node (its host memory).
- A declared device must name its ``node:``; on that node the local rules apply unchanged
  (slices share their GPU, a CPU with ``memory:`` is a budget of exactly that size, a CPU
  without it is the node's RAM), measured by that node's probe.
- A declared device on a node that is not in the cluster now is planned at its declared
  ``memory:`` and shown as not present (its worker starts once the node joins); without
  ``memory:`` there is nothing to plan it with: ConfigError.

Each ``Device`` carries its node's label (``Device.node``); ``DeviceNodes`` says, per device
name, what to look the node up by when a worker starts (a node that left and came back has a
new Ray id, so the lookup is by the name the config gave, or the label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal, TypeVar

from modelyard.cluster.nodes import NodeInfo, find_node
from modelyard.config.schema import DeviceConfig, DeviceKind
from modelyard.devices.device import Device
from modelyard.devices.inventory import build_inventory
from modelyard.errors import ConfigError

T = TypeVar("T")

DeviceNodes = Mapping[str, str]
"""Device name -> the node selector its worker is started on (``find_node``)."""


def cluster_inventory(
    declared: Literal["auto"] | Sequence[DeviceConfig], nodes: Sequence[NodeInfo]
) -> tuple[tuple[Device, ...], dict[str, str]]:
    """The devices to plan on ``nodes`` (see the module doc), and each one's node selector."""
    if declared == "auto":
        return _auto(nodes)
    unplaced = [d.name for d in declared if d.node is None]
    if unplaced:
        raise ConfigError(
            f"with a cluster every declared device names its node; device(s) "
            f"{', '.join(unplaced)} have no node: (give a node id, IP, or a custom resource "
            f"of that node, or use devices: auto)"
        )
    by_name: dict[str, Device] = {}
    selectors: dict[str, str] = {}
    groups: dict[str, list[DeviceConfig]] = {}
    for d in declared:
        assert d.node is not None
        groups.setdefault(d.node, []).append(d)
        selectors[d.name] = d.node
    for selector, group in groups.items():
        node = find_node(selector, nodes)
        local = [d.model_copy(update={"node": None}) for d in group]
        if node is None:
            for d in local:
                by_name[d.name] = _absent(d, selector)
            continue
        found = build_inventory(local, gpus=_const(node.gpus), host=_const(node.host))
        for device in found:
            by_name[device.name] = replace(device, node=node.label)
    return tuple(by_name[d.name] for d in declared), selectors


def _auto(nodes: Sequence[NodeInfo]) -> tuple[tuple[Device, ...], dict[str, str]]:
    devices: list[Device] = []
    any_gpu = any(n.gpus for n in nodes)
    for node in nodes:
        if any_gpu:
            devices.extend(
                Device(
                    f"{node.label}/gpu{g.index}",
                    DeviceKind.CUDA,
                    g.index,
                    g.total_bytes,
                    g.free_bytes,
                    node=node.label,
                )
                for g in node.gpus
            )
        else:
            devices.append(
                Device(
                    f"{node.label}/cpu",
                    DeviceKind.CPU,
                    0,
                    node.host.total_bytes,
                    node.host.available_bytes,
                    node=node.label,
                )
            )
    return tuple(devices), {d.name: d.node or "" for d in devices}


def _const(value: T) -> Callable[[], T]:
    """A probe that answers what the node's own probe measured."""
    return lambda: value


def _absent(d: DeviceConfig, selector: str) -> Device:
    if d.memory_bytes is None:
        raise ConfigError(
            f"device {d.name!r} is on node {selector!r}, which is not in the cluster now; give "
            f"it memory: to plan for it before the node joins"
        )
    cap = d.memory_bytes
    return Device(d.name, d.kind, d.index, cap, cap, present=False, node=selector)
