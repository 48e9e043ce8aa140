"""The cluster as the composition root uses it: join, measure, and the parts to wire in.

``cluster_devices`` is what ``modelyard plan`` needs (join, probe every node, the devices);
``join_cluster`` adds what ``Server.from_config`` wires: the ``RayLauncher`` for the worker
loader and the ``NodeWatcher`` started and stopped with the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from modelyard.cluster.connect import connect
from modelyard.cluster.inventory import cluster_inventory
from modelyard.cluster.launcher import RayLauncher
from modelyard.cluster.nodes import NodeInfo, probe_nodes
from modelyard.cluster.watch import NodeWatcher, Replanner, Retirer
from modelyard.config.schema import ClusterConfig, DeviceConfig, DeviceKind
from modelyard.devices.device import Device


@dataclass(frozen=True, slots=True)
class ClusterDevices:
    """What one look at the cluster found: its nodes, the devices on them, and each device's
    node selector."""

    nodes: tuple[NodeInfo, ...]
    devices: tuple[Device, ...]
    selectors: dict[str, str]


def cluster_devices(
    cluster: ClusterConfig, declared: Literal["auto"] | Sequence[DeviceConfig]
) -> tuple[ModuleType, ClusterDevices]:
    """Join ``cluster`` and measure its devices (one probe per node); starts no worker."""
    ray = connect(cluster)
    gpus = declared == "auto" or any(d.kind is DeviceKind.CUDA for d in declared)
    nodes = probe_nodes(ray, gpus=gpus)
    devices, selectors = cluster_inventory(declared, nodes)
    return ray, ClusterDevices(nodes, devices, selectors)


class ClusterRuntime:
    """A server's cluster parts: the launcher its worker loader uses and the node watcher."""

    def __init__(self, ray: ModuleType, found: ClusterDevices) -> None:
        self.ray = ray
        self.found = found
        self.launcher = RayLauncher(ray, found.selectors)
        self.watcher = NodeWatcher(ray, found.devices, found.selectors)

    @property
    def devices(self) -> tuple[Device, ...]:
        return self.found.devices

    def node_of(self, device: str) -> str | None:
        """The node label of a planned device, for the status API."""
        for d in self.found.devices:
            if d.name == device:
                return d.node
        return self.found.selectors.get(device)

    def attach(self, controller: Replanner, loader: Retirer | None) -> None:
        self.watcher.attach(controller, loader)

    def start(self) -> None:
        self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()


def join_cluster(
    cluster: ClusterConfig, declared: Literal["auto"] | Sequence[DeviceConfig]
) -> ClusterRuntime:
    """Join ``cluster``, measure its devices, and build the parts a server wires in."""
    ray, found = cluster_devices(cluster, declared)
    return ClusterRuntime(ray, found)
