"""Supervision of one device's worker: restart with capped backoff, reload, give up on a culprit.

``DeviceWorker`` is the long-lived object for one plan device (``sim0``, ``gpu1``); the worker
behind it (a ``WorkerHandle`` from its ``WorkerLauncher``, see ``modelyard.workers.launcher``) is
replaced on every restart. Its states (``modelyard.workers.status.WorkerState``)::

    STARTING ──> READY ──(process died)──> RESTARTING ──> READY
        │                                      │
        └──(cannot start, N tries)──> FAILED <─┘          any ──(stop)──> STOPPED

A recycle (an idle worker replaced to give back memory) goes READY ──> STARTING. Its policy and
its listener are in ``modelyard.workers.restart``.

What happens when a worker dies:

- every request in flight to it fails at once with ``WorkerDied`` (503 / UNAVAILABLE), and new
  requests for its models get Unavailable until they are reloaded (the listener takes their
  replicas out of rotation);
- it is restarted after ``RestartPolicy.delay`` (doubling, capped) and its models reloaded;
- blame (``modelyard.workers.blame``): a death during a load is charged to the one model loading
  (loads are serialised per device, so there is exactly one); a death while serving to the
  models with requests in flight. A model charged ``max_crashes`` times in a row is given up:
  FAILED, with the reason. Deaths after ``stable_seconds`` of uptime start the count afresh.

A stuck worker (it stops answering the heartbeat: SIGSTOP, a deadlock; see
``modelyard.workers.heartbeat``) is one more way to die: the ``Heartbeat`` this supervisor runs
on each worker kills it through its handle within ``RestartPolicy.heartbeat.timeout_s`` +
``interval_s`` (3.5 s by default), its requests failing with the reason, and it is restarted and
reloaded like any dead worker. Once the server is stopping (``stop_restarting``) a worker that
dies is not restarted.

Every wait here is on the ``Clock`` and every worker comes from the launcher, so these rules are
unit-tested without processes or sleeps (tests/unit/workers/test_supervisor_logic.py).

Async safety: one event loop; the listener is called on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelyard import deadlines
from modelyard.devices import DeviceTarget
from modelyard.errors import ModelyardError, Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.controller import LoadRequest
from modelyard.workers.blame import Slot
from modelyard.workers.client import SubprocessLauncher, WorkerServable
from modelyard.workers.heartbeat import Heartbeat
from modelyard.workers.launcher import (
    SYSTEM_CLOCK,
    Clock,
    WorkerDied,
    WorkerHandle,
    WorkerLauncher,
    WorkerSpec,
)
from modelyard.workers.messages import Load, Loaded, Outputs, Report, Reported, Unload
from modelyard.workers.restart import ReplicaListener, RestartPolicy
from modelyard.workers.status import ReplicaStatus, WorkerState, WorkerStatus

__all__ = ["DeviceWorker", "ReplicaListener", "RestartPolicy", "WorkerState"]

log = logging.getLogger(__name__)


class DeviceWorker:
    """The supervised worker of one device; also the ``ModelHost`` of its models' servables.

    ``launcher`` starts its workers (default: a local subprocess each); ``clock`` times its
    restart delays, back-off, ``stable_seconds`` and heartbeats (default: the real clock).
    """

    def __init__(
        self,
        name: str,
        target: DeviceTarget,
        *,
        memory_cap_bytes: int = 0,
        infer_threads: int = 4,
        policy: RestartPolicy | None = None,
        listener: ReplicaListener | None = None,
        launcher: WorkerLauncher | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.target = target
        self.policy = policy or RestartPolicy()
        self._spec = WorkerSpec(
            name, target, memory_cap_bytes, infer_threads, self.policy.start_timeout_s
        )
        self._launcher: WorkerLauncher = launcher or SubprocessLauncher()
        self._clock = clock
        self.listener = listener
        self.state = WorkerState.STARTING
        self.restarts = 0
        self.recycles = 0
        self.last_exit = ""
        self._proc: WorkerHandle | None = None
        self._beat: Heartbeat | None = None
        self._started_at = 0.0
        self._slots: dict[VersionKey, Slot] = {}
        self._load_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self._deaths = 0
        self._restart_task: asyncio.Task[None] | None = None
        self._no_restarts = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.alive else None

    # -- loading -------------------------------------------------------------------------

    async def load(self, request: LoadRequest) -> WorkerServable:
        """Load ``request`` in this device's worker (starting it first if needed).

        Retries when the worker dies during this load, until the model has been charged
        ``max_crashes`` deaths; then raises Unavailable with the reason. A load error the worker
        reports (corrupt file, missing extra) is raised as is.
        """
        slot = self._slots.setdefault(request.key, Slot(request))
        try:
            await self._ensure_started()
            while True:
                await self._wait_ready()
                try:
                    async with self._load_lock:
                        await self._load_slot(slot)
                    break
                except WorkerDied as exc:
                    died = slot.attempt
                    if slot.charge_load() and slot.crashes >= self.policy.max_crashes:
                        raise Unavailable(self._given_up(request.key, slot, exc.message)) from exc
                    # Retry only once the death has been handled (readiness cleared, a restart
                    # under way), so the retry waits for the new worker.
                    if died is not None:
                        await died.wait_closed()
                    else:
                        # The worker is known dead but its end is not handled yet (readiness
                        # still set): yield, or this loop spins without letting it be handled.
                        await asyncio.sleep(0.01)
        except BaseException:
            if self._slots.get(request.key) is slot:
                del self._slots[request.key]  # nothing to reload after a restart
            raise
        assert slot.servable is not None
        return slot.servable

    async def _load_slot(self, slot: Slot) -> None:
        proc = self._proc
        slot.attempt = proc if proc is not None and proc.alive else None
        if proc is None or not proc.alive:
            raise WorkerDied(self.last_exit or f"worker for device {self.name} is not running")
        r = slot.request
        reply = await proc.request(
            lambda rid: Load(
                rid, r.key.model, r.key.version, str(r.version_dir), r.platform.value,
                str(self.target.in_worker()), r.declared,
            )
        )  # fmt: skip
        assert isinstance(reply, Loaded)
        slot.measured_bytes = reply.measured_bytes
        slot.placed_on = reply.placed_on
        if slot.servable is None:
            slot.servable = WorkerServable(self, r.key, reply.signature, reply.signatures)
        slot.loaded = True

    def _given_up(self, key: VersionKey, slot: Slot, last: str) -> str:
        reason = slot.give_up_reason(self.name, last)
        log.error("%s %s", key, reason)
        return reason

    # -- serving (ModelHost) -------------------------------------------------------------

    async def infer(
        self, key: VersionKey, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        slot = self._slots.get(key)
        proc = self._proc
        if slot is None or not slot.loaded or proc is None or self.state is not WorkerState.READY:
            why = f": {self.last_exit}" if self.last_exit else ""
            raise Unavailable(
                f"model {key.model!r} version {key.version} is not loaded on device {self.name} "
                f"right now (worker {self.state.value}{why})"
            )
        slot.in_flight += 1
        budget_ms = deadlines.remaining_ms()  # the worker skips it once this has run out
        try:
            reply = await proc.infer(key.model, key.version, inputs, signature_name, budget_ms)
        finally:
            slot.in_flight -= 1
        assert isinstance(reply, Outputs)
        if reply.compute_ns:
            clock = deadlines.current()
            if clock is not None:
                clock.note_compute(reply.compute_ns)
        tensors = reply.tensors
        # decode builds a fresh dict per reply: no copy needed
        return tensors if isinstance(tensors, dict) else dict(tensors)

    async def unload(self, key: VersionKey) -> None:
        slot = self._slots.pop(key, None)
        proc = self._proc
        if slot is None or not slot.loaded or proc is None or not proc.alive:
            return
        async with self._load_lock:
            with contextlib.suppress(WorkerDied):  # a dead worker has nothing left to unload
                await proc.request(lambda rid: Unload(rid, key.model, key.version))

    async def report(self) -> dict[str, Any]:
        """The worker's own account of what it holds (see ``WorkerHost.report``)."""
        proc = self._proc
        if proc is None or not proc.alive:
            raise Unavailable(f"worker for device {self.name} is {self.state.value}")
        reply = await proc.request(lambda rid: Report(rid))
        assert isinstance(reply, Reported)
        return reply.report

    def status(self) -> WorkerStatus:
        """A snapshot of this device's worker (the status API renders it)."""
        models = {
            key: ReplicaStatus(s.loaded, s.measured_bytes, s.placed_on or None, s.crashes)
            for key, s in sorted(self._slots.items())
        }
        return WorkerStatus(
            self.pid, self.state, self.restarts, self.recycles, self.last_exit or None, models
        )

    # -- process lifecycle ---------------------------------------------------------------

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if self._proc is None and self.state is WorkerState.STARTING:
                await self._spawn_until_up()

    async def _wait_ready(self) -> None:
        await self._ready.wait()
        if self.state is not WorkerState.READY:
            raise Unavailable(
                f"worker for device {self.name} is {self.state.value}: {self.last_exit}"
            )

    async def _spawn_until_up(self) -> None:
        """Start a process, retrying with backoff; FAILED after ``max_start_failures``."""
        failures = 0
        while self.state not in (WorkerState.STOPPED, WorkerState.FAILED):
            beat = Heartbeat(self.policy.heartbeat, self._clock, self.name, self._on_exit)
            started_at = self._clock.monotonic()
            try:
                proc = await self._launcher.launch(self._spec, beat)
            except (ModelyardError, OSError) as exc:
                failures += 1
                self.last_exit = str(exc)
                log.error("device %s: %s", self.name, exc)
                if failures >= self.policy.max_start_failures:
                    self._fail(f"worker for device {self.name} could not start: {exc}")
                    return
                await self._clock.sleep(self.policy.delay(failures))
                continue
            beat.start(proc)
            self._proc, self._beat, self._started_at = proc, beat, started_at
            self.state = WorkerState.READY
            self._ready.set()
            log.info("device %s: worker pid %s ready", self.name, proc.pid)
            return

    def _on_exit(self, proc: WorkerHandle, reason: str) -> None:
        if proc is not self._proc or self.state in (WorkerState.STOPPED, WorkerState.FAILED):
            return
        log.error("device %s: %s; restarting", self.name, reason)
        if self._clock.monotonic() - self._started_at >= self.policy.stable_seconds:
            self._deaths = 0
            for slot in self._slots.values():
                slot.crashes = 0
        self._deaths += 1
        self.state = WorkerState.RESTARTING
        self.last_exit = reason
        self._ready.clear()
        self._proc, self._beat = None, None
        for key, slot in self._slots.items():
            if slot.in_flight:
                slot.crashes += 1
            if slot.loaded:
                slot.loaded = False
                if self.listener is not None:
                    self.listener.replica_down(key, self.name, reason)
        if self._no_restarts:  # the server is stopping: nothing would be served by a new one
            self._halt()
            return
        self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    def stop_restarting(self) -> None:
        """The server is stopping: a worker that dies from now on is not restarted (a restart
        under way is cancelled), so shutdown never waits for a spawn or a reload."""
        self._no_restarts = True
        if self._restart_task is not None and not self._restart_task.done():
            self._restart_task.cancel()
            self._halt()

    def _halt(self) -> None:
        self.state = WorkerState.STOPPED
        self._ready.set()  # loads waiting for a restart see STOPPED and raise

    async def _restart(self) -> None:
        await self._clock.sleep(self.policy.delay(self._deaths))
        if self.state is not WorkerState.RESTARTING:
            return
        self.restarts += 1
        await self._spawn_until_up()
        state: WorkerState = self.state  # changed by the await above
        if state is not WorkerState.READY:
            return
        async with self._load_lock:
            for key, slot in list(self._slots.items()):
                if slot.servable is None:
                    continue  # a first load in progress: its own load() retries it
                if slot.crashes >= self.policy.max_crashes:
                    self._give_up(key, slot, self.last_exit)
                    continue
                try:
                    await self._load_slot(slot)
                except WorkerDied:
                    slot.crashes += 1  # died reloading this one: _on_exit schedules the next try
                    return
                except ModelyardError as exc:
                    self._slots.pop(key, None)
                    if self.listener is not None:
                        self.listener.replica_failed(
                            key, self.name, f"reload failed: {exc.message}"
                        )
                    continue
                if self.listener is not None:
                    self.listener.replica_up(key, self.name)
        log.info("device %s: worker pid %s serving again", self.name, self.pid)

    def _give_up(self, key: VersionKey, slot: Slot, last: str) -> None:
        self._slots.pop(key, None)
        if self.listener is not None:
            self.listener.replica_failed(key, self.name, self._given_up(key, slot, last))

    def _fail(self, reason: str) -> None:
        self.state = WorkerState.FAILED
        self.last_exit = reason
        self._ready.set()  # wake waiting loads: they see FAILED and raise
        for key in list(self._slots):
            slot = self._slots.pop(key)
            if slot.servable is not None and self.listener is not None:
                self.listener.replica_failed(key, self.name, reason)

    async def recycle(self, wait_s: float = 10.0) -> bool:
        """Replace an idle worker's process with a fresh one (started by the next load), to
        give back memory a framework kept after its models unloaded. Does nothing (False)
        while the device holds a model: recycling never fails a request."""
        proc = self._proc
        if self._slots or proc is None or self.state is not WorkerState.READY:
            return False
        async with self._load_lock:
            # Its exit is expected: _on_exit ignores a worker that is not current.
            beat, self._proc, self._beat = self._beat, None, None
            self._ready.clear()
            self.state = WorkerState.STARTING
            self.recycles += 1
            await _retire(proc, beat, wait_s)
        log.info("device %s: worker pid %s recycled", self.name, proc.pid)
        return True

    def kill(self) -> None:
        """SIGKILL the worker process now (no restart follows once stopping)."""
        self._no_restarts = True
        if self._proc is not None:
            self._proc.kill()

    async def stop(self, wait_s: float = 10.0) -> None:
        """Stop supervising, ask the worker to exit, and wait until it has (kill if needed)."""
        self.state = WorkerState.STOPPED
        self._ready.set()
        if self._restart_task is not None:
            self._restart_task.cancel()
            await asyncio.gather(self._restart_task, return_exceptions=True)
        if self._proc is not None:
            await _retire(self._proc, self._beat, wait_s)
        self._proc, self._beat = None, None


async def _retire(proc: WorkerHandle, beat: Heartbeat | None, wait_s: float) -> None:
    """Stop a worker; its heartbeat watches until it has ended (a stuck one is killed)."""
    await proc.stop(wait_s)
    if beat is not None:
        await beat.close()
