"""The planner's inputs and output, as frozen values: demands, devices, and the Plan.

The planner takes *demands* (how many bytes each model version needs, where it may go, how many
replicas), never config; ``modelyard.planner.demands`` turns a ``ServerConfig`` into demands.
The devices are ``modelyard.devices.Device`` values, measured by the caller (re-exported here).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from modelyard.devices import Device
from modelyard.errors import ResourceExhausted
from modelyard.ids import VersionKey

__all__ = [
    "Assignment",
    "Device",
    "DeviceUsage",
    "FootprintSource",
    "ModelDemand",
    "Plan",
    "Strategy",
    "UnreadableVersion",
    "display_order",
]


class FootprintSource(enum.Enum):
    """Where a demand's byte count came from, in the order the planner trusts them."""

    CONFIG = "config"  # `memory:` in the config: the user said so
    MEASURED = "measured"  # recorded after a real load of the same artifact
    ESTIMATED = "estimated"  # computed from the artifact's weights plus documented overheads


class Strategy(enum.Enum):
    """Which algorithm produced a plan."""

    GREEDY = "greedy"  # keep current placements, then best-balanced first-fit-decreasing
    SOLVER = "solver"  # OR-Tools CP-SAT (the `solver` extra)
    EXACT = "exact"  # bounded exhaustive search, for small instances without the solver


def display_order(key: VersionKey) -> tuple[tuple[int, str | int], ...]:
    """Sort key that puts ``m2:1`` before ``m10:1`` (numbers inside names compare as numbers)."""
    parts = re.split(r"(\d+)", key.model)
    return (*((1, int(p)) if p.isdigit() else (0, p) for p in parts if p), (1, key.version))


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model version to place: ``replicas`` copies of ``bytes`` each, on distinct devices.

    ``pins`` is the set of device names the version may use (``None``: any device).
    """

    key: VersionKey
    bytes: int
    pins: tuple[str, ...] | None = None
    replicas: int = 1
    source: FootprintSource = FootprintSource.CONFIG

    def __post_init__(self) -> None:
        if self.bytes < 0:
            raise ValueError(f"{self.key}: bytes must be >= 0, got {self.bytes}")
        if self.replicas < 1:
            raise ValueError(f"{self.key}: replicas must be >= 1, got {self.replicas}")

    def allows(self, device: str) -> bool:
        return self.pins is None or device in self.pins


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where the replicas of one version go; ``devices`` may be short of ``wanted`` replicas."""

    key: VersionKey
    bytes: int
    devices: tuple[str, ...]
    wanted: int
    source: FootprintSource = FootprintSource.CONFIG

    @property
    def complete(self) -> bool:
        return len(self.devices) == self.wanted


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """One device in a plan: what it holds and how full it is."""

    device: Device
    budget_bytes: int
    used_bytes: int
    models: tuple[VersionKey, ...]

    @property
    def utilisation(self) -> float:
        """Share of the capacity used by the plan's models (0.0 for a zero-size device)."""
        cap = self.device.capacity_bytes
        return self.used_bytes / cap if cap else 0.0


@dataclass(frozen=True, slots=True)
class UnreadableVersion:
    """A version whose artifact could not be sized, and why (names the file and what was
    expected)."""

    key: VersionKey
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer: assignments per version, usage per device, and, when some replica
    has no place, an explanation naming models, devices and bytes, with what would make it fit.

    A plan is *feasible* when every replica of every demand is placed. An infeasible plan still
    carries the best partial placement found, which ``serve --serve-what-fits`` may load.
    """

    assignments: tuple[Assignment, ...]
    devices: tuple[DeviceUsage, ...]
    headroom_fraction: float
    strategy: Strategy
    moves: int = 0
    explanation: str = ""
    notes: tuple[str, ...] = field(default=())
    unreadable: tuple[UnreadableVersion, ...] = field(default=())
    """Versions that could not be sized (a corrupt or unreadable artifact): not planned, and
    FAILED with ``reason`` when served; they do not make a plan infeasible."""

    @property
    def feasible(self) -> bool:
        return all(a.complete for a in self.assignments)

    @property
    def short(self) -> tuple[Assignment, ...]:
        """Assignments with fewer devices than replicas wanted."""
        return tuple(a for a in self.assignments if not a.complete)

    def placement(self) -> dict[VersionKey, tuple[str, ...]]:
        """Version -> device names; pass it back to ``place`` as ``current`` when re-planning."""
        return {a.key: a.devices for a in self.assignments if a.devices}

    def devices_of(self, key: VersionKey) -> tuple[str, ...]:
        for a in self.assignments:
            if a.key == key:
                return a.devices
        return ()

    @property
    def max_utilisation(self) -> float:
        return max((d.utilisation for d in self.devices), default=0.0)

    def raise_if_infeasible(self) -> None:
        """Raise ResourceExhausted with the explanation unless every replica is placed."""
        if not self.feasible:
            raise ResourceExhausted(self.explanation)
