"""What a device's worker reports about itself, as values: ``WorkerStatus`` and its states.

``DeviceWorker.status()`` returns a ``WorkerStatus`` snapshot; the status API renders it
(``server.http.status``) and the worker loader reads the measured footprint of a load from it
(``WorkerStatus.measured_bytes``), so nobody digs through a dict for either.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelyard.ids import VersionKey


class WorkerState(enum.Enum):
    """A device worker's state (the transitions are drawn in ``workers.supervisor``)."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One model version a worker should hold: whether it is loaded now, what its last load
    measured (bytes on the device; None before a load finished), where the framework put its
    weights (None: not known), and how many worker deaths it was charged in a row."""

    loaded: bool
    measured_bytes: int | None
    placed_on: str | None
    crashes: int


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """A snapshot of one device's worker: its process (``pid`` None when none runs), state,
    restart and recycle counts, the reason of its last exit (None: none yet) and its models."""

    pid: int | None
    state: WorkerState
    restarts: int
    recycles: int
    last_exit: str | None
    models: Mapping[VersionKey, ReplicaStatus] = field(default_factory=dict)

    def measured_bytes(self, key: VersionKey) -> int | None:
        """What the last load of ``key`` on this worker measured; None when not measured."""
        replica = self.models.get(key)
        return replica.measured_bytes if replica is not None else None
