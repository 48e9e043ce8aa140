"""The heartbeat's judgement: is a worker that stopped answering stuck, or only busy?

The front end pings each worker every ``HeartbeatPolicy.interval_s``; the worker answers from
its reader thread, not behind its inferences, so a worker that runs a long model still answers.
Any frame the worker sends counts as an answer. When nothing has come back for ``timeout_s``
the process itself is looked at (``ProcessSample``: its scheduler state and CPU time):

- stopped (SIGSTOP, a debugger), a zombie, gone, or it used (almost) no CPU while silent
  (a deadlock, a wait that never ends): **stuck**;
- it used CPU while silent (a framework call that holds the GIL: a big model's load, an
  import), or it is waiting on the disk: **busy**, given up to ``busy_timeout_s`` of silence
  before it is declared stuck.

"Almost no CPU" is a measurement over a window: the CPU clock is read when the silence is first
noticed, and the idle verdict needs ``cpu_window_s`` of it. Without that, a silence first
noticed after it already passed ``timeout_s`` (the front end's own event loop held for seconds:
a loaded machine, a server's start-up work) was judged on a CPU sample of zero length, "used
0.00 s of CPU", and a healthy worker whose answer was still unread was killed. A worker that is
starting (``HeartbeatWatch.starting``: its first ``start_grace_s`` after HELLO, while it
imports frameworks and loads its first models, when a thread that holds the GIL may wait on the
disk or for the CPU with the leader asleep) is waited for up to ``start_grace_s`` before the
idle rule applies. A stopped, dead or vanished process is stuck after ``timeout_s`` whatever
the phase.

``HeartbeatWatch`` holds no clock and does no I/O: the caller passes the time and the sample,
so every rule is tested on plain values (tests/unit/workers/test_heartbeat.py). ``Heartbeat``
runs it for one worker incarnation through the launcher seam (``WorkerHandle.ping`` /
``probe`` / ``kill``, on a ``Clock``), so a worker on another machine is judged by the same
rules on what its launcher can see (tests/unit/workers/test_supervisor_logic.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from modelyard.workers.launcher import Clock, ProcessSample, WorkerHandle

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    """How often a worker is pinged, and how long a silence is tolerated.

    A stuck worker is found within ``timeout_s + interval_s`` (3.5 s by default): its
    requests fail then with 503 / UNAVAILABLE, its models report not ready, and it is killed
    and restarted with its models. ``interval_s`` of 0 or less turns the heartbeat off.
    """

    interval_s: float = 0.5
    timeout_s: float = 3.0
    """Silence after which the process is looked at; stuck at once if it is not working."""
    busy_timeout_s: float = 30.0
    """Silence tolerated from a process that keeps using CPU (a call that holds the GIL)."""
    idle_cpu_s: float = 0.05
    """CPU time below which a silent process counts as not working at all."""
    start_grace_s: float = 10.0
    """From a worker's HELLO: how long a silent process that is not stopped is waited for
    while it starts (imports, first loads) before the idle rule applies; it bounds how late a
    worker that hangs while starting is found."""

    @property
    def cpu_window_s(self) -> float:
        """The shortest CPU measurement the idle verdict is made on (half of ``timeout_s``)."""
        return self.timeout_s / 2


class Verdict(enum.Enum):
    ALIVE = "alive"
    BUSY = "busy"
    STUCK = "stuck"


_NOT_RUNNING = frozenset(
    {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
)


def sample_process(pid: int) -> ProcessSample | None:
    """The worker's state and CPU time now; None when the process is gone."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return ProcessSample(proc.status(), float(times.user + times.system))
    except psutil.Error:
        return None


class HeartbeatWatch:
    """The silence of one worker process, and the verdict on it."""

    def __init__(self, policy: HeartbeatPolicy, now: float) -> None:
        self.policy = policy
        self.last_heard = now
        self._silent_since_cpu: float | None = None
        self._silent_since_at = now
        self._starting_until = now  # not starting unless ``starting`` says so
        self.why = ""
        """Why the last verdict was BUSY or STUCK, for logs and errors."""

    def heard(self, now: float) -> None:
        """The worker sent a frame: it is alive now."""
        self.last_heard = now
        self._silent_since_cpu = None

    def starting(self, now: float) -> None:
        """The worker has just started (said HELLO): ``start_grace_s`` of start grace."""
        self._starting_until = now + self.policy.start_grace_s

    def silence(self, now: float) -> float:
        return max(0.0, now - self.last_heard)

    def judge(self, now: float, sample: Callable[[], ProcessSample | None]) -> Verdict:
        """ALIVE while the worker answers; BUSY or STUCK once it has been silent too long.

        ``sample`` is called only when the worker has missed a ping (never for a worker that
        answers), so a healthy worker costs no system call.
        """
        silent = self.silence(now)
        if silent <= self.policy.interval_s:
            return Verdict.ALIVE
        seen = sample()
        if seen is None:
            # Normally the end of its stream says so first; this is for a stream that stays
            # open (a child process holding the socket) after the worker died.
            self.why = "its process is gone"
            return Verdict.STUCK if silent > self.policy.timeout_s else Verdict.ALIVE
        if self._silent_since_cpu is None:
            # The first missed ping: the CPU time now is the baseline of the silence.
            self._silent_since_cpu, self._silent_since_at = seen.cpu_s, now
        if seen.status in _NOT_RUNNING:
            # Stopped is stuck whatever the clock says, but give the ping its full timeout so
            # a process the debugger pauses for a moment is not killed under it.
            self.why = f"its process is {seen.status}"
            return Verdict.STUCK if silent > self.policy.timeout_s else Verdict.ALIVE
        if silent <= self.policy.timeout_s:
            return Verdict.ALIVE
        used = seen.cpu_s - self._silent_since_cpu
        if used < self.policy.idle_cpu_s and seen.status != psutil.STATUS_DISK_SLEEP:
            measured = now - self._silent_since_at
            if measured < self.policy.cpu_window_s:
                # Silent past the timeout already when first looked at: measure first.
                self.why = f"silent; measuring its CPU ({measured:.1f} s so far)"
                return Verdict.ALIVE
            if now < self._starting_until:
                self.why = f"starting: {used:.2f} s of CPU while silent ({seen.status})"
                return Verdict.BUSY
            self.why = (
                f"its process used {used:.2f} s of CPU in {measured:.1f} s while silent "
                f"({seen.status})"
            )
            return Verdict.STUCK
        if silent > self.policy.busy_timeout_s:
            self.why = f"it kept using CPU ({used:.1f} s) without answering"
            return Verdict.STUCK
        self.why = f"busy: {used:.1f} s of CPU while silent"
        return Verdict.BUSY


class Heartbeat:
    """The heartbeat of one worker incarnation: a ping every ``interval_s`` through its handle,
    the verdict of a ``HeartbeatWatch``, and a stuck worker killed with the reason.

    It is the ``WorkerEvents`` given to the launcher for that worker: every frame heard counts
    as an answer, and the worker's end stops the watch and is passed on to ``on_exit``.
    ``start`` begins watching once the worker is up; ``close`` stops (a worker that is stopping
    is watched until then, so one that is stuck is killed as soon as that is known instead of
    after the stop's wait).
    """

    def __init__(
        self,
        policy: HeartbeatPolicy,
        clock: Clock,
        device: str,
        on_exit: Callable[[WorkerHandle, str], None] | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._device = device
        self._on_exit = on_exit
        self._watch = HeartbeatWatch(policy, clock.monotonic())
        self._handle: WorkerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def heard(self) -> None:
        """The worker sent a frame: it is alive now."""
        self._watch.heard(self._clock.monotonic())

    def exited(self, reason: str) -> None:
        """The worker ended: stop watching, and tell ``on_exit``."""
        self.cancel()
        if self._handle is not None and self._on_exit is not None:
            self._on_exit(self._handle, reason)

    def start(self, handle: WorkerHandle) -> None:
        """Watch ``handle``, the worker just launched with this as its events."""
        self._handle = handle
        self.heard()  # it has just said it is ready
        self._watch.starting(self._clock.monotonic())
        if self.policy.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(handle), name=f"worker-{self._device}-heartbeat"
            )

    def cancel(self) -> None:
        """Stop watching now (the worker has ended)."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """Stop watching, and return once the watch has ended."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, handle: WorkerHandle) -> None:
        """Ping every ``interval_s``; kill the worker when the watch says it is stuck."""
        interval = self.policy.interval_s
        expected = self._clock.monotonic() + interval
        busy_logged = False
        while handle.alive:
            await self._clock.sleep(interval)
            if not handle.alive:
                return  # it ended while we slept: its handle reports that end
            now = self._clock.monotonic()
            late = now - expected
            expected = now + interval
            handle.ping()
            if late > interval:
                # This event loop itself was held (a long callback): answers may be waiting
                # unread in the socket, so judge on the next tick, not on this one.
                continue
            verdict = self._watch.judge(now, handle.probe)
            if verdict is Verdict.STUCK:
                reason = (
                    f"worker for device {self._device} (pid {handle.pid}) stopped answering: "
                    f"no answer to heartbeats for {self._watch.silence(now):.1f} s "
                    f"({self._watch.why})"
                )
                log.error("%s; killing it", reason)
                handle.kill(reason)
                return
            if verdict is Verdict.BUSY and not busy_logged:
                log.warning("worker %s (pid %s) is not answering heartbeats but is working "
                            "(%s); waiting", self._device, handle.pid, self._watch.why)  # fmt: skip
            busy_logged = verdict is Verdict.BUSY
