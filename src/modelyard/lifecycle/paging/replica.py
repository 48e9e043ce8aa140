"""The pager's values: a version's tier, its booking on its device, a device's room.

``PagedReplica`` and ``DeviceBook`` are mutable records owned by the ``Pager`` (one event loop);
``Tier`` and ``Room`` are values.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from modelyard.ids import VersionKey
from modelyard.lifecycle.loading import LoadRequest
from modelyard.lifecycle.paging.eviction import Usage
from modelyard.servable import Servable


class Tier(enum.Enum):
    """Where a version's weights are."""

    DEVICE = "device"  # loaded in its device's worker: serving
    HOST = "host"  # a copy of its folder in host memory: a page-in reads RAM
    DISK = "disk"  # only its files: a page-in reads the disk


@dataclass(eq=False)
class PagedReplica:
    """One version on its home device, as the pager books it. Mutated by the pager only."""

    key: VersionKey
    device: str
    request: LoadRequest
    planned_bytes: int
    declared: bool
    """The bytes come from ``memory:`` (the user's word, kept over any measurement)."""
    resident: bool
    artifact_bytes: int = 0
    servable: Servable | None = None
    measured_bytes: int = 0
    in_flight: int = 0
    """Requests running on it or waiting for its page-in: it may not leave while > 0."""
    task: asyncio.Task[None] | None = None
    usage: Usage = field(default_factory=Usage)
    removed: bool = False
    page_ins: int = 0
    page_ins_from_host: int = 0
    evictions: int = 0
    bytes_paged_in: int = 0
    page_in_seconds: float = 0.0
    hits: int = 0
    misses: int = 0
    timeouts: int = 0

    @property
    def bytes(self) -> int:
        """The device bytes it is booked at: ``memory:`` when given, else what its loads
        measured (at least its artifact's bytes: a load that reused memory freed just before
        measures less than it holds), else the planner's estimate."""
        if self.declared or not self.measured_bytes:
            return self.planned_bytes
        return max(self.measured_bytes, self.artifact_bytes)


@dataclass(frozen=True, slots=True)
class Room:
    """A device's size for paging: the budget the book keeps to, the capacity measurements
    are held to (see ``Pager._confirmed``)."""

    budget_bytes: int
    capacity_bytes: int


@dataclass
class DeviceBook:
    """One device as the pager books it: its sizes, the lock its page-ins take one at a time,
    and the event set when a version on it is released."""

    name: str
    budget_bytes: int
    capacity_bytes: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    baseline_bytes: int | None = None
    """The worker's memory with no version loaded (its framework): learnt from measurements."""
    unbooked_bytes: int = 0
    """What the worker held beyond its book and baseline at the last measurement."""
