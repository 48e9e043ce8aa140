"""The pager: where each paged version is (device, host memory, disk), and the moves between.

One ``PagedReplica`` per (version, device). Its tier is ``DEVICE`` while a servable for it is
loaded in its device's worker, else ``HOST`` while the ``HostStore`` holds a copy of its folder,
else ``DISK``. Rules (docs/paging.md):

- **Page-in on demand, single-flight.** A request for a version not on its device starts one
  page-in task; later requests wait on the same task. A wait is bounded by ``max_wait_ms``, the
  request's deadline and ``MAX_WAITING`` requests waiting in all: past them, 503 / UNAVAILABLE
  (504 for a deadline) naming the reason; the page-in goes on for the next request.
- **Room by bytes.** A page-in needs the version's bytes plus its artifact's bytes (a load
  reads the file into memory before it builds the model) within the device's budget. The
  coldest versions leave first (``eviction``); resident versions never; a version with requests
  in flight or waiting never (so it serves what waited for it before it can leave). The memory
  an eviction freed is confirmed by measurement (the worker's RSS on a CPU device) before the
  page-in starts; when the worker holds more than the book says, one more version leaves.
- **Page-out** closes the version's servable in its worker (the worker gives the memory back
  to the system) and keeps or makes a copy in host memory while it has room, dropping colder
  copies, else leaves the version on disk.
- Page-ins on one device run one at a time (a per-device lock); other devices and requests to
  versions already on a device never wait for them.

Async safety: one event loop; only ``HostStore.copy_in`` runs on threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from modelyard import deadlines
from modelyard.config.sizes import format_size
from modelyard.errors import DeadlineExceeded, ModelyardError, Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.loading import Loader, LoadRequest
from modelyard.lifecycle.paging.eviction import Candidate, choose_victims, coldest_first
from modelyard.lifecycle.paging.replica import DeviceBook, PagedReplica, Room, Tier
from modelyard.lifecycle.paging.store import HostStore, folder_bytes
from modelyard.servable import Servable

log = logging.getLogger(__name__)

MAX_WAITING = 1024
"""Requests that may wait for page-ins at once, over all versions; beyond it: 503."""

MemoryProbe = Callable[[str], Awaitable[int | None]]
"""The bytes a device's worker holds now (RSS on a CPU device); None when it cannot tell."""

Measure = Callable[[VersionKey, str], int | None]
"""What the last load of a version on a device measured (its memory growth)."""


class Pager:
    """Tiers, page-in and page-out for every paged version; see the module doc."""

    def __init__(
        self,
        loader: Loader,
        store: HostStore,
        rooms: Mapping[str, Room],
        *,
        max_wait_ms: int,
        memory: MemoryProbe | None = None,
        measure: Measure | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rooms``: device name -> its budget and capacity (the versions on it, resident
        ones included, are kept within the budget by the book)."""
        self._loader = loader
        self._store = store
        self._devices = {
            n: DeviceBook(n, r.budget_bytes, r.capacity_bytes) for n, r in rooms.items()
        }
        self._max_wait_s = max_wait_ms / 1000.0
        self._memory = memory
        self._measure = measure
        self._clock = clock
        self._replicas: dict[tuple[VersionKey, str], PagedReplica] = {}
        self._waiting = 0
        self._copies: set[asyncio.Task[None]] = set()

    # -- registration (the controller's load) --------------------------------------------

    async def register(
        self, request: LoadRequest, planned_bytes: int, *, declared: bool, resident: bool
    ) -> PagedReplica:
        """Book a version on its device and load it there once (its signature and its bytes
        are learnt; it may be paged out right after). Raises what the load raises."""
        device = request.device_name or str(request.device)
        if device not in self._devices:
            self._devices[device] = DeviceBook(device, planned_bytes, planned_bytes)
        original = request.version_dir
        link = self._store.link(request.key, original)
        replica = PagedReplica(
            request.key,
            device,
            dataclasses.replace(request, version_dir=link),
            planned_bytes,
            declared,
            resident,
            artifact_bytes=await asyncio.to_thread(folder_bytes, original),
        )
        self._replicas[(request.key, device)] = replica
        try:
            await self._host_copy(replica, make_room=False)
            await self._page_in(replica)
        except BaseException:
            self._replicas.pop((request.key, device), None)
            self._store.forget(request.key)
            raise
        replica.page_ins = 0  # the first load is not a page-in
        replica.bytes_paged_in = 0
        replica.page_in_seconds = 0.0
        return replica

    async def remove(self, replica: PagedReplica) -> None:
        """The version is unloaded for good: close it wherever it is, drop its copy."""
        replica.removed = True
        if replica.task is not None and not replica.task.done():
            # A page-in under way finishes (its load is not torn in half), unless it waits for
            # room that pinned versions hold: then it is given up.
            done, _ = await asyncio.wait({replica.task}, timeout=30.0)
            if not done:
                replica.task.cancel()
            with contextlib.suppress(BaseException):
                await replica.task
        async with self._devices[replica.device].lock:
            servable, replica.servable = replica.servable, None
            if servable is not None:
                await servable.close()
        self._replicas.pop((replica.key, replica.device), None)
        if not any(k == replica.key for k, _ in self._replicas):
            self._store.forget(replica.key)

    # -- the request path ----------------------------------------------------------------

    async def acquire(self, replica: PagedReplica) -> Servable:
        """The version's servable on its device, paged in first if needed; the caller must
        ``release`` it after its request. Raises Unavailable (or DeadlineExceeded) when the
        wait is too long or too many requests wait."""
        if replica.removed:
            raise Unavailable(f"model {replica.key.model!r} version {replica.key.version} is "
                              "being unloaded")  # fmt: skip
        replica.usage.touch(self._clock())
        replica.in_flight += 1
        if replica.servable is not None:
            replica.hits += 1
            return replica.servable
        replica.misses += 1
        if self._waiting >= MAX_WAITING:
            self.release(replica)
            raise Unavailable(
                f"model {replica.key.model!r} version {replica.key.version} is paged out and "
                f"{self._waiting} requests already wait for page-ins (the limit); retry later"
            )
        task = replica.task
        if task is None or task.done():
            task = replica.task = asyncio.get_running_loop().create_task(self._page_in(replica))
            task.add_done_callback(_retrieve)
        tier = self.tier(replica)
        remaining_ms = deadlines.remaining_ms()
        limit = self._max_wait_s
        by_deadline = remaining_ms is not None and remaining_ms / 1000.0 < limit
        if remaining_ms is not None:
            limit = min(limit, max(0.0, remaining_ms / 1000.0))
        started = self._clock()
        self._waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(task), limit)
        except TimeoutError:
            self.release(replica)
            replica.timeouts += 1
            waited = (self._clock() - started) * 1000
            where = f"from {tier.value}" if tier is not Tier.DEVICE else ""
            if by_deadline:
                raise DeadlineExceeded(
                    f"deadline exceeded: model {replica.key.model!r} version "
                    f"{replica.key.version} was paging in {where} on device {replica.device} "
                    f"and the request's deadline ran out after {waited:.0f} ms"
                ) from None
            raise Unavailable(
                f"model {replica.key.model!r} version {replica.key.version} is paged out and did "
                f"not page in {where} on device {replica.device} within max_wait_ms="
                f"{self._max_wait_s * 1000:.0f} (waited {waited:.0f} ms); the page-in goes on, "
                "retry shortly"
            ) from None
        except ModelyardError as exc:
            self.release(replica)
            raise Unavailable(
                f"paging in model {replica.key.model!r} version {replica.key.version} on device "
                f"{replica.device} failed: {exc.message}"
            ) from exc
        except BaseException:
            self.release(replica)
            raise
        finally:
            self._waiting -= 1
        if replica.servable is None:  # cannot happen while pinned; never hand out None
            self.release(replica)
            raise Unavailable(f"model {replica.key.model!r} version {replica.key.version} "
                              "left its device while paging in")  # fmt: skip
        return replica.servable

    def release(self, replica: PagedReplica) -> None:
        """One request on ``replica`` is done (or gave up waiting)."""
        replica.in_flight -= 1
        if replica.in_flight <= 0:
            replica.in_flight = 0
            self._devices[replica.device].released.set()

    # -- moves -----------------------------------------------------------------------------

    def tier(self, replica: PagedReplica) -> Tier:
        if replica.servable is not None:
            return Tier.DEVICE
        return Tier.HOST if self._store.holds(replica.key) else Tier.DISK

    async def _page_in(self, replica: PagedReplica) -> None:
        device = self._devices[replica.device]
        async with device.lock:
            if replica.servable is not None or replica.removed:
                return
            source = self.tier(replica)
            await self._make_room(device, replica)
            started = self._clock()
            servable = await self._loader.load(replica.request)
            seconds = self._clock() - started
            replica.servable = servable
            measured = self._measure(replica.key, device.name) if self._measure else None
            if measured:
                replica.measured_bytes = max(replica.measured_bytes, measured)
            replica.page_ins += 1
            replica.page_ins_from_host += source is Tier.HOST
            replica.bytes_paged_in += replica.artifact_bytes
            replica.page_in_seconds += seconds
            await self._learn_baseline(device)
            log.info("paged in %s on %s from %s in %.3f s", replica.key, device.name,
                     source.value, seconds)  # fmt: skip

    async def _make_room(self, device: DeviceBook, incoming: PagedReplica) -> None:
        """Page out the coldest versions on ``device`` until ``incoming`` fits; wait for
        pinned ones when nothing else can go. Then confirm by measurement."""
        need = incoming.bytes + incoming.artifact_bytes
        for _ in range(10_000):  # bounded: each turn evicts or waits up to 1 s
            on = self._on(device.name, incoming)
            free = device.budget_bytes - sum(r.bytes for r in on)
            victims = choose_victims(self._candidates(on), free_bytes=free, need_bytes=need)
            if victims is None:
                if not [r for r in on if not r.resident]:
                    break  # nothing could ever leave: the plan said it fits alone
                device.released.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(device.released.wait(), 1.0)
                continue
            for key in victims:
                victim = self._replicas.get((key, device.name))
                # Each close awaits the worker: a request may have pinned a later victim
                # meanwhile (a hit). It stays while it runs; the room is counted again.
                if victim is None or victim.in_flight > 0:
                    break
                await self._page_out(victim)
            else:
                if await self._confirmed(device, need, incoming):
                    return

    async def _confirmed(self, device: DeviceBook, need: int, incoming: PagedReplica) -> bool:
        """True when the worker's measured memory leaves room for ``need`` within the device's
        capacity; else one more version leaves (False: look again). True when it cannot be
        measured or nothing more may leave.

        The book keeps versions within the *budget* (capacity less headroom); a worker holds a
        little more than its book (allocator caches a framework keeps after a page-out), which
        the headroom absorbs. Only when the measurement says the page-in would pass the
        *capacity* does one more version leave."""
        if self._memory is None or device.baseline_bytes is None:
            return True
        held = await self._memory(device.name)
        if held is None:
            return True
        used = held - device.baseline_bytes
        booked = sum(r.bytes for r in self._on(device.name, incoming))
        device.unbooked_bytes = max(0, used - booked)
        if used + need <= device.capacity_bytes:
            return True
        movable = coldest_first(self._candidates(self._on(device.name, incoming)))
        if not movable:
            log.warning("device %s: worker holds %s beside its framework, the book %s; "
                        "nothing more can leave", device.name, format_size(used),
                        format_size(booked))  # fmt: skip
            return True
        log.info("device %s: worker holds %s beside its framework (book: %s); %s leaves too",
                 device.name, format_size(used), format_size(booked), movable[0].key)  # fmt: skip
        await self._page_out(self._replicas[(movable[0].key, device.name)])
        return False

    async def _page_out(self, replica: PagedReplica) -> None:
        servable, replica.servable = replica.servable, None
        if servable is None:
            return
        replica.evictions += 1
        await servable.close()
        log.info("paged out %s from %s", replica.key, replica.device)
        if not self._store.holds(replica.key):
            task = asyncio.get_running_loop().create_task(self._host_copy(replica, True))
            self._copies.add(task)
            task.add_done_callback(self._copies.discard)

    async def _host_copy(self, replica: PagedReplica, make_room: bool) -> None:
        """Keep a copy of ``replica``'s folder in host memory if it fits, dropping copies of
        strictly colder versions (not paging in) when ``make_room``."""
        size = replica.artifact_bytes
        if size > self._store.capacity_bytes or self._store.holds(replica.key):
            return
        if make_room:
            now = self._clock()
            mine = (replica.usage.score(now), replica.usage.last_use)
            others = [
                r
                for (k, _), r in self._replicas.items()
                if k != replica.key and self._store.holds(k) and (r.task is None or r.task.done())
            ]
            others.sort(key=lambda r: (r.usage.score(now), r.usage.last_use))
            for other in others:
                if self._store.used_bytes + size <= self._store.capacity_bytes:
                    break
                if (other.usage.score(now), other.usage.last_use) >= mine:
                    break
                self._store.drop(other.key)
        await asyncio.to_thread(self._store.copy_in, replica.key, size)

    async def _learn_baseline(self, device: DeviceBook) -> None:
        """The worker's memory less what its versions measured, after its first load: the
        framework's share (taken once: later, allocator caches blur it)."""
        if self._memory is None or device.baseline_bytes is not None:
            return
        held = await self._memory(device.name)
        if held is None:
            return
        loaded = sum(r.bytes for r in self._on(device.name, None))
        device.baseline_bytes = max(0, held - loaded)

    # -- views -----------------------------------------------------------------------------

    def _on(self, device: str, but: PagedReplica | None) -> list[PagedReplica]:
        return [
            r
            for (_, d), r in self._replicas.items()
            if d == device and r.servable is not None and r is not but
        ]

    def _candidates(self, replicas: list[PagedReplica]) -> list[Candidate]:
        now = self._clock()
        return [
            Candidate(
                r.key,
                r.bytes,
                r.usage.score(now),
                r.usage.last_use,
                pinned=r.in_flight > 0,
                resident=r.resident,
            )
            for r in replicas
        ]

    def status(self) -> dict[str, Any]:
        """Every paged version's tier and counters, and each device's and host memory's use."""
        now = self._clock()
        versions = []
        for (key, device), r in sorted(self._replicas.items(), key=lambda kv: kv[0]):
            versions.append(
                {
                    "model": key.model,
                    "version": key.version,
                    "device": device,
                    "tier": self.tier(r).value,
                    "paging_in": r.task is not None and not r.task.done(),
                    "resident": r.resident,
                    "bytes": r.bytes,
                    "host_bytes": self._store.bytes_of(key),
                    "last_use_seconds_ago": (
                        round(now - r.usage.last_use, 3) if r.usage.last_use > 0 else None
                    ),
                    "in_flight": r.in_flight,
                    "hits": r.hits,
                    "misses": r.misses,
                    "page_ins": r.page_ins,
                    "page_ins_from_host": r.page_ins_from_host,
                    "evictions": r.evictions,
                    "bytes_paged_in": r.bytes_paged_in,
                    "page_in_seconds": round(r.page_in_seconds, 6),
                    "wait_timeouts": r.timeouts,
                }
            )
        devices = [
            {
                "name": d.name,
                "budget_bytes": d.budget_bytes,
                "used_bytes": sum(r.bytes for r in self._on(d.name, None)),
                "capacity_bytes": d.capacity_bytes,
                "baseline_bytes": d.baseline_bytes,
                "unbooked_bytes": d.unbooked_bytes,
            }
            for d in self._devices.values()
        ]
        return {
            "host_memory_bytes": self._store.capacity_bytes,
            "host_used_bytes": self._store.used_bytes,
            "waiting": self._waiting,
            "page_ins": sum(v["page_ins"] for v in versions),
            "evictions": sum(v["evictions"] for v in versions),
            "devices": devices,
            "versions": versions,
        }

    async def aclose(self) -> None:
        """Stop copying and drop host memory (after the models were unloaded)."""
        for task in list(self._copies):
            task.cancel()
        await asyncio.gather(*self._copies, return_exceptions=True)
        self._store.close()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A page-in nobody waited for to the end: its failure is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("a page-in failed: %s", exc)
