"""Crash blame: which model version a worker's death is charged to, and when one is given up.

A ``Slot`` is a model version a device should hold, with the deaths charged to it. The
supervisor (``modelyard.workers.supervisor``) charges:

- a death during a load to the one version loading (loads are serialised per device), once per
  worker (``charge_load``): a retry that finds the same worker dead before its end was handled
  is no new crash;
- a death while serving to every version with requests in flight, and a death while reloading
  after a restart to the version reloading;
- nothing to anyone after a worker that was up ``RestartPolicy.stable_seconds``: it had
  recovered, so the counts start afresh.

A version charged ``RestartPolicy.max_crashes`` times in a row is given up, with
``give_up_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.lifecycle.loading import LoadRequest
from modelyard.workers.client import WorkerServable
from modelyard.workers.launcher import WorkerHandle


@dataclass(eq=False)
class Slot:
    """A model version this device should hold."""

    request: LoadRequest
    servable: WorkerServable | None = None
    loaded: bool = False
    measured_bytes: int | None = None
    placed_on: str = ""
    crashes: int = 0
    in_flight: int = 0
    attempt: WorkerHandle | None = None
    """The worker the last load of this slot was sent to (None: there was none alive)."""
    charged: WorkerHandle | None = None
    """The last worker whose death was charged to this slot (each death counts once)."""

    def charge_load(self) -> bool:
        """The worker this slot's last load went to died: charge it, once per worker. False
        when there was no worker or its death was charged already."""
        died = self.attempt
        if died is None or died is self.charged:
            return False
        self.charged = died
        self.crashes += 1
        return True

    def give_up_reason(self, device: str, last: str) -> str:
        return (
            f"given up: its load crashed the worker of device {device} "
            f"{self.crashes} times in a row (last: {last})"
        )
