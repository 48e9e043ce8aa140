"""The seam where worker processes start: what the supervisor needs of a running worker.

The supervisor (``modelyard.workers.supervisor.DeviceWorker``) never spawns anything itself: it
asks a ``WorkerLauncher`` for a worker and talks to the ``WorkerHandle`` it gets back. Today the
one launcher is ``modelyard.workers.client.SubprocessLauncher``: a child process on this host,
pinned to its device before any framework is imported, spoken to over a Unix socketpair. A
cluster engine (a Ray actor per device, a pod) plugs in here by implementing the two protocols
below; restart, back-off, crash blame, give-up and the heartbeat's verdicts stay in the
supervisor, unchanged, and are unit-tested against a fake launcher
(tests/unit/workers/test_supervisor_logic.py).

A handle's contract, whoever implements it:

- ``request`` sends one protocol message (``modelyard.workers.messages``) and returns the reply;
  the worker's own errors come back as the ``ModelyardError`` it sent, and the worker's end as
  ``WorkerDied``: every request in flight fails at once when the worker ends;
- the launcher tells the supervisor, through the ``WorkerEvents`` given to ``launch``, of every
  frame heard from the worker (any frame answers the heartbeat) and, once, of an end nobody
  asked for (a crash, a kill, a stuck worker killed), with the reason a user reads;
- ``probe`` is the heartbeat's look at a worker that stopped answering: is its process stopped,
  gone, or still using CPU (busy, not stuck)? A local launcher asks the operating system; a
  remote one asks its node, or answers None when it cannot tell (the worker is then judged on
  its silence alone);
- ``kill`` ends the worker now (with a reason: the heartbeat found it stuck), ``stop`` asks it
  to unload and exit and returns once it has (killing it if needed).

``Clock`` is the other seam: the supervisor's and the heartbeat's time and sleeps, so restart
delays, back-off and ``stable_seconds`` are tested without real sleeps.

Async safety: handles and events are used on the server's one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelyard.devices import DeviceTarget
from modelyard.errors import Unavailable
from modelyard.workers.messages import Message


class WorkerDied(Unavailable):
    """The worker ended while a request was in flight (or before it was sent), or was found
    stuck and killed."""


class Clock(Protocol):
    """Time as the supervisor sees it: seconds on a monotonic clock, and sleeping on it."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """What the operating system says about the worker process at one moment."""

    status: str
    """psutil's status: running, sleeping, disk-sleep, stopped, tracing-stop, zombie, dead."""
    cpu_s: float
    """User + system CPU seconds of every thread so far."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What to start: the worker of one plan device."""

    device: str
    """The plan's name for the device (``sim0``, ``gpu1``); one worker per name."""
    target: DeviceTarget
    """The device the worker is pinned to (``cpu``, ``cuda:1``)."""
    memory_cap_bytes: int = 0
    """The per-process memory cap of a GPU slice; 0: none."""
    infer_threads: int = 4
    start_timeout_s: float = 60.0
    """How long ``launch`` waits for the worker to say it is ready."""


class WorkerEvents(Protocol):
    """What a handle tells the supervisor about its worker (one events object per launch)."""

    def heard(self) -> None:
        """The worker sent a frame (a reply, a heartbeat answer): it is alive now. Called for
        every frame, so it must be cheap."""

    def exited(self, reason: str) -> None:
        """The worker ended without being asked to (``stop``): called at most once, after
        ``launch`` returned, once every request in flight has failed. ``reason`` says how
        (``... was killed by SIGKILL``, ``... stopped answering: ...``)."""


class WorkerHandle(Protocol):
    """One running incarnation of a worker; a restart gets a new handle."""

    @property
    def pid(self) -> int | None:
        """The worker's process id, for status and logs (a remote launcher may give None)."""

    @property
    def alive(self) -> bool:
        """False once the worker has ended or was found dead; requests then raise WorkerDied."""

    async def request(self, message_of: Callable[[int], Message]) -> Message:
        """Send the message built for a fresh request id; return the reply.

        Raises the worker's error as a ModelyardError (from its (code, message)), or WorkerDied.
        """

    def infer(
        self,
        model: str,
        version: int,
        tensors: Mapping[str, np.ndarray],
        signature_name: str | None,
        budget_ms: float | None,
    ) -> Awaitable[Message]:
        """``request`` of ``Infer(rid, model, version, tensors, signature_name, budget_ms)``
        (a handle may send it without building the message); the reply, or the same errors."""

    def ping(self) -> None:
        """Send a heartbeat ping; no reply is awaited (any frame heard answers it)."""

    def probe(self) -> ProcessSample | None:
        """The worker process's state and CPU time now; None when it is gone or cannot be
        looked at. Called only for a worker that missed a ping."""

    def kill(self, reason: str | None = None) -> None:
        """End the worker now. With a reason (found stuck), every request in flight fails at
        once with ``WorkerDied(reason)`` and the end's reason starts with it."""

    async def stop(self, wait_s: float = 10.0) -> None:
        """Ask the worker to unload and exit; kill it when it has not within ``wait_s``.
        Returns once it has ended; ``WorkerEvents.exited`` is not called for it."""

    async def wait_closed(self) -> None:
        """Return once this worker's end has been handled (``exited`` called, if it will be)."""


class WorkerLauncher(Protocol):
    """Starts workers. ``launch`` returns once the worker is ready for requests."""

    async def launch(self, spec: WorkerSpec, events: WorkerEvents) -> WorkerHandle:
        """Start the worker of ``spec.device``; Unavailable (or OSError) when it does not come
        up within ``spec.start_timeout_s``. Cancelled, it leaves no worker behind."""
