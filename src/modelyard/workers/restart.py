"""How hard a device's supervisor (``modelyard.workers.supervisor``) tries (``RestartPolicy``),
and whom it tells when a replica leaves or rejoins service (``ReplicaListener``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from modelyard.ids import VersionKey
from modelyard.workers.heartbeat import HeartbeatPolicy


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How hard to try. Delays double from ``initial_delay_s`` up to ``max_delay_s``."""

    initial_delay_s: float = 0.2
    max_delay_s: float = 30.0
    max_crashes: int = 3
    """A model charged with this many worker deaths in a row is given up."""
    max_start_failures: int = 5
    """Consecutive failed spawns (no HELLO) before the device is FAILED."""
    stable_seconds: float = 60.0
    """A worker up this long has recovered: its next death starts the counts afresh."""
    start_timeout_s: float = 60.0
    heartbeat: HeartbeatPolicy = field(default_factory=HeartbeatPolicy)
    """How a stuck worker is found (pinged every 0.5 s; stuck after 3 s without an answer)."""

    def delay(self, consecutive_deaths: int) -> float:
        return float(
            min(self.max_delay_s, self.initial_delay_s * 2 ** max(0, consecutive_deaths - 1))
        )


class ReplicaListener(Protocol):
    """Told when a replica on a worker leaves or rejoins service; the controller implements it."""

    def replica_down(self, key: VersionKey, device: str, reason: str) -> None: ...

    def replica_up(self, key: VersionKey, device: str) -> None: ...

    def replica_failed(self, key: VersionKey, device: str, reason: str) -> None: ...
