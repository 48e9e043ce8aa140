"""``WorkerLoader``: the controller's ``Loader`` that loads each version in its device's worker.

One ``DeviceWorker`` per plan device name, created on the first load for that name; loads on
different devices run in parallel (the controller gathers them), loads on one device one at a
time. After a successful load on a real device the measured footprint is recorded in the
footprint cache (when one is given), so the next plan uses what the load really took.

Ownership: the loader owns every worker process it started; ``aclose`` stops them all and
returns only once they have exited. Async safety: one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from modelyard.errors import ModelyardError, NotFound
from modelyard.lifecycle.controller import LoadRequest
from modelyard.lifecycle.servable import Servable
from modelyard.planner.footprints import FootprintCache
from modelyard.workers.launcher import WorkerLauncher
from modelyard.workers.progress import LoadProgress
from modelyard.workers.restart import ReplicaListener, RestartPolicy
from modelyard.workers.supervisor import DeviceWorker

log = logging.getLogger(__name__)


class WorkerLoader:
    """Loads every model version in the worker process of its planned device."""

    def __init__(
        self,
        *,
        memory_caps: Mapping[str, int] | None = None,
        policy: RestartPolicy | None = None,
        progress: LoadProgress | None = None,
        footprints: FootprintCache | None = None,
        infer_threads: int = 4,
        recycle_growth_bytes: int = 256 * 2**20,
        launcher: WorkerLauncher | None = None,
    ) -> None:
        """``memory_caps``: device name -> bytes, the per-process cap of a GPU slice (default:
        the cap of the request's ``DeviceTarget``).
        ``recycle_growth_bytes``: an emptied worker whose RSS is this much above what it held
        the first time it was empty is recycled (its framework kept memory after unloads).
        ``launcher``: what starts each device's worker (default: a local subprocess)."""
        self._caps = dict(memory_caps or {})
        self._policy = policy or RestartPolicy()
        self._progress = progress
        self._footprints = footprints
        self._threads = infer_threads
        self._listener: ReplicaListener | None = None
        self._workers: dict[str, DeviceWorker] = {}
        self._recycle_bytes = recycle_growth_bytes
        self._idle_rss: dict[str, int] = {}
        self._launcher = launcher

    def attach(self, listener: ReplicaListener) -> None:
        """Who hears about replicas leaving and rejoining service (the controller)."""
        self._listener = listener
        for worker in self._workers.values():
            worker.listener = listener

    async def load(self, request: LoadRequest) -> Servable:
        name = request.device_name or str(request.device)
        worker = self._workers.get(name)
        if worker is None:
            worker = DeviceWorker(
                name,
                request.device,
                memory_cap_bytes=self._caps.get(name, request.device.memory_cap_bytes or 0),
                infer_threads=self._threads,
                policy=self._policy,
                listener=self._listener,
                launcher=self._launcher,
            )
            self._workers[name] = worker
        try:
            servable = await worker.load(request)
        except ModelyardError as exc:
            if self._progress is not None:
                self._progress.finished(name, str(request.key), False, exc.message)
            raise
        if self._progress is not None:
            self._progress.finished(name, str(request.key), True)
        self._record(request, worker)
        return servable

    def _record(self, request: LoadRequest, worker: DeviceWorker) -> None:
        measured = worker.status().measured_bytes(request.key)
        if self._footprints is None or not measured:
            return
        try:
            self._footprints.record_measured(request.version_dir, measured, request.device.kind)
        except OSError as exc:  # the cache is an optimisation, never a reason to fail a load
            log.warning("could not record the footprint of %s: %s", request.key, exc)

    async def released(self, device: str) -> None:
        """A replica on ``device`` was unloaded: measure the worker's memory, and recycle the
        worker when it holds nothing and kept more than ``recycle_growth_bytes`` of memory
        since it was first empty (``ReleasesDevices``)."""
        worker = self._workers.get(device)
        if worker is None or worker.pid is None:
            return
        try:
            report = await worker.report()
        except ModelyardError:
            return  # a dead worker is the supervisor's business
        rss = int(report["rss_bytes"])
        log.info("device %s: worker RSS %d MiB after an unload, %d model(s) left",
                 device, rss // 2**20, len(report["models"]))  # fmt: skip
        if report["models"]:
            return
        baseline = self._idle_rss.setdefault(device, rss)
        if rss - baseline > self._recycle_bytes and await worker.recycle():
            log.warning("device %s: its worker kept %d MiB after unloading everything; "
                        "recycled it", device, (rss - baseline) // 2**20)  # fmt: skip
            self._idle_rss.pop(device, None)

    @property
    def workers(self) -> Mapping[str, DeviceWorker]:
        return dict(self._workers)

    async def report(self, device: str) -> dict[str, Any]:
        """The named device's worker's own report (``WorkerHost.report``)."""
        worker = self._workers.get(device)
        if worker is None:
            raise NotFound(f"no worker for device {device!r}; devices: {', '.join(self._workers)}")
        return await worker.report()

    async def retire(self, device: str, wait_s: float = 2.0) -> None:
        """Stop ``device``'s worker for good and forget it (its node left the cluster): no
        restart is tried; a later load on ``device`` starts a fresh worker."""
        worker = self._workers.pop(device, None)
        if worker is not None:
            await worker.stop(wait_s)

    def stop_restarting(self) -> None:
        """The server is stopping: no worker is restarted from now on."""
        for worker in self._workers.values():
            worker.stop_restarting()

    def kill_all(self) -> None:
        """SIGKILL every worker process at once (see ``Server.kill_workers``)."""
        for worker in self._workers.values():
            worker.kill()

    async def aclose(self, wait_s: float = 10.0) -> None:
        """Stop every worker (they unload and exit; killed after ``wait_s``)."""
        if self._progress is not None:
            self._progress.close()
        await asyncio.gather(*(w.stop(wait_s) for w in self._workers.values()))
