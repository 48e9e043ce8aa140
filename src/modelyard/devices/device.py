"""``Device``: a named device the planner may fill, with its capacity and free memory.

The values come from ``modelyard.devices.inventory`` (the config's ``devices:`` and what the
probes measured) or, in tests and benchmarks, straight from the caller: the planner never
measures anything itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelyard.config.schema import DeviceKind
from modelyard.devices.target import DeviceTarget


@dataclass(frozen=True, slots=True)
class Device:
    """A device the planner may fill.

    ``capacity_bytes`` is the device's size (or its declared cap); ``free_bytes`` is what is
    available to the demands being planned, i.e. capacity minus memory held by anything that is
    *not* one of those demands (other processes, a CUDA context). ``present`` is False for a
    declared device that is not on this machine: offline planning still fills it.
    """

    name: str
    kind: DeviceKind
    index: int
    capacity_bytes: int
    free_bytes: int
    present: bool = True
    node: str | None = None
    """The cluster node the device is on (its label, as ``modelyard plan`` and the status API
    show it); None: this machine, no cluster."""

    @property
    def target(self) -> DeviceTarget:
        """Where this device's models load: a GPU capped at the capacity (a slice's size; a
        whole GPU's total, which caps nothing), or the CPU, uncapped (its budget is a plan's
        limit, not a process's)."""
        if self.kind is DeviceKind.CUDA:
            return DeviceTarget(DeviceKind.CUDA, self.index, self.capacity_bytes)
        return DeviceTarget.cpu()

    def budget_bytes(self, headroom_fraction: float) -> int:
        """Bytes the planner may fill: free memory less ``headroom_fraction`` of the capacity.

        Headroom is a share of the *capacity*, so a device keeps the same reserve whether or not
        something else already uses part of it.
        """
        reserve = math.ceil(self.capacity_bytes * headroom_fraction)
        return max(0, min(self.free_bytes, self.capacity_bytes) - reserve)
