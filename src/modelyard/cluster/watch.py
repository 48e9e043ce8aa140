"""``NodeWatcher``: notices a node leaving or rejoining the cluster, and what follows.

Every ``interval_s`` it asks Ray which nodes are alive and looks up each device's node
(``modelyard.cluster.nodes.find_node``). A node that left: its devices' workers are retired
(``WorkerLoader.retire``: no restart is tried on a node that is gone) and the controller
re-plans their models onto the devices left (``Controller.devices_lost``: through the planner,
nothing serving is evicted; what does not fit is FAILED with the reason). A node that came back:
its devices are plannable again (``Controller.devices_joined``), the models FAILED for want of
room when it left are loaded again where they fit, and the next re-plan or change uses them.

Requests are not held up meanwhile: a lost worker's connection ends at once, its requests fail
with ``WorkerDied`` and its models answer 503 until they are loaded elsewhere.

Async safety: one event loop; Ray is asked on a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from types import ModuleType
from typing import Protocol

from modelyard.cluster.nodes import NodeInfo, alive_nodes, find_node, labelled
from modelyard.devices.device import Device
from modelyard.errors import ModelyardError

log = logging.getLogger(__name__)


class Replanner(Protocol):
    """The controller, as the watcher uses it."""

    async def devices_lost(self, lost: Sequence[str], reason: str) -> object: ...

    async def devices_joined(self, devices: Sequence[Device]) -> None: ...


class Retirer(Protocol):
    """The worker loader, as the watcher uses it."""

    async def retire(self, device: str, wait_s: float = 2.0) -> None: ...


class NodeWatcher:
    """Watches the nodes of ``devices`` (see the module doc)."""

    def __init__(
        self,
        ray: ModuleType,
        devices: Sequence[Device],
        selectors: dict[str, str],
        interval_s: float = 0.5,
    ) -> None:
        self._ray = ray
        self._devices = {d.name: d for d in devices}
        self._groups: dict[str, list[str]] = {}
        for name, selector in selectors.items():
            self._groups.setdefault(selector, []).append(name)
        self._up = {s: all(self._devices[n].present for n in names)
                    for s, names in self._groups.items()}  # fmt: skip
        self._interval = interval_s
        self._controller: Replanner | None = None
        self._loader: Retirer | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost: dict[str, str] = {}
        """Node selector -> why it is counted lost (for the status API)."""

    def attach(self, controller: Replanner, loader: Retirer | None) -> None:
        self._controller, self._loader = controller, loader

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ray-node-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # Ray's GCS briefly unreachable: look again next time
                log.warning("could not look at the Ray cluster's nodes", exc_info=True)

    async def check(self) -> None:
        """Look once: handle every node that left or came back since the last look."""
        records = await asyncio.to_thread(alive_nodes, self._ray)
        nodes = [NodeInfo(i, ip, label, custom) for i, (ip, label, custom) in
                 labelled(records).items()]  # fmt: skip
        for selector, names in self._groups.items():
            try:
                up = find_node(selector, nodes) is not None
            except ModelyardError:
                up = True  # ambiguous now (two nodes claim it): not lost
            if up == self._up[selector]:
                continue
            self._up[selector] = up
            if up:
                await self._joined(selector, names)
            else:
                await self._lost(selector, names)

    async def _lost(self, selector: str, names: list[str]) -> None:
        reason = f"node {selector} lost"
        self.lost[selector] = reason
        log.error("%s: re-planning the models of %s onto the devices left", reason,
                  ", ".join(names))  # fmt: skip
        if self._loader is not None:
            await asyncio.gather(*(self._loader.retire(n) for n in names))
        if self._controller is not None:
            await self._controller.devices_lost(names, reason)

    async def _joined(self, selector: str, names: list[str]) -> None:
        self.lost.pop(selector, None)
        log.info("node %s is back: devices %s can be planned again", selector, ", ".join(names))
        if self._controller is not None:
            back = [replace(self._devices[n], present=True) for n in names]
            await self._controller.devices_joined(back)
