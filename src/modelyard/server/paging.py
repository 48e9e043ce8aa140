"""Wiring paging into a server: the host store, the pager and the paging loader around the
worker loader (``Server`` calls ``paging_loader`` when the config has ``paging:``)."""

from __future__ import annotations

from modelyard.config.schema import PagingConfig
from modelyard.errors import ModelyardError
from modelyard.ids import VersionKey
from modelyard.lifecycle.loading import Loader
from modelyard.lifecycle.paging.loader import PagingLoader
from modelyard.lifecycle.paging.pager import Measure, MemoryProbe, Pager
from modelyard.lifecycle.paging.replica import Room
from modelyard.lifecycle.paging.store import HostStore
from modelyard.planner.paging import PagingPlan
from modelyard.workers.loader import WorkerLoader


def paging_loader(
    inner: Loader, workers: WorkerLoader | None, plan: PagingPlan, config: PagingConfig
) -> PagingLoader:
    """A ``PagingLoader`` over ``inner``; with worker processes, evictions are confirmed by
    each CPU worker's RSS and page-ins measure what they took."""
    store = HostStore(config.host_memory_bytes)
    store.start()
    rooms = {d.device.name: Room(d.budget_bytes, d.device.capacity_bytes) for d in plan.devices}
    memory: MemoryProbe | None = None
    measure: Measure | None = None
    if workers is not None:
        memory, measure = _probes(workers)
    pager = Pager(
        inner, store, rooms, max_wait_ms=config.max_wait_ms, memory=memory, measure=measure
    )
    return PagingLoader(inner, pager, plan)


def _probes(workers: WorkerLoader) -> tuple[MemoryProbe, Measure]:
    async def rss(device: str) -> int | None:
        worker = workers.workers.get(device)
        if worker is None or worker.target.is_cuda:
            return None  # on a GPU the worker's own measurement is the allocator's, per load
        try:
            report = await workers.report(device)
        except ModelyardError:
            return None
        return int(report["rss_bytes"])

    def measured(key: VersionKey, device: str) -> int | None:
        worker = workers.workers.get(device)
        return worker.status().measured_bytes(key) if worker is not None else None

    return rss, measured
