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

``HeartbeatWatch`` holds no clock and does no I/O: the caller passes the time and the sample,
so every rule is tested on plain values (tests/unit/workers/test_heartbeat.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import psutil


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


class Verdict(enum.Enum):
    ALIVE = "alive"
    BUSY = "busy"
    STUCK = "stuck"


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """What the operating system says about the worker process at one moment."""

    status: str
    """psutil's status: running, sleeping, disk-sleep, stopped, tracing-stop, zombie, dead."""
    cpu_s: float
    """User + system CPU seconds of every thread so far."""


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
        self.why = ""
        """Why the last verdict was BUSY or STUCK, for logs and errors."""

    def heard(self, now: float) -> None:
        """The worker sent a frame: it is alive now."""
        self.last_heard = now
        self._silent_since_cpu = None

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
            self._silent_since_cpu = seen.cpu_s
        if seen.status in _NOT_RUNNING:
            # Stopped is stuck whatever the clock says, but give the ping its full timeout so
            # a process the debugger pauses for a moment is not killed under it.
            self.why = f"its process is {seen.status}"
            return Verdict.STUCK if silent > self.policy.timeout_s else Verdict.ALIVE
        if silent <= self.policy.timeout_s:
            return Verdict.ALIVE
        used = seen.cpu_s - self._silent_since_cpu
        if used < self.policy.idle_cpu_s and seen.status != psutil.STATUS_DISK_SLEEP:
            self.why = f"its process used {used:.2f} s of CPU while silent ({seen.status})"
            return Verdict.STUCK
        if silent > self.policy.busy_timeout_s:
            self.why = f"it kept using CPU ({used:.1f} s) without answering"
            return Verdict.STUCK
        self.why = f"busy: {used:.1f} s of CPU while silent"
        return Verdict.BUSY
