"""A worker's execution slots, shared fairly between its models.

A worker runs at most ``threads`` inferences at once. Without a rule, whichever model sends
most requests takes every slot: four slow requests to one model made every other model on the
device wait for them (33 s). So:

* **A cap per model.** One model runs at most ``per_model`` inferences at once (default
  ``threads - 1``, at least 1): with two or more slots, one slot is always left for the
  device's other models, whatever one model is sent.
* **A fair queue.** Work that cannot start waits in a FIFO per model; a freed slot goes to the
  next model in round-robin order that has work and is under its cap, so a model with a long
  queue does not make another wait behind all of it.
* **Cancel and deadlines.** Queued work can be withdrawn (``cancel``: its caller is gone); work
  whose deadline passed while it waited is not run but handed to its ``expired`` callback.

Running work is never interrupted: a model's code cannot be stopped safely halfway.

**Inline runs.** A caller may run a job on its own thread instead of a slot's
(``start_inline``/``finish_inline``: the worker's reader does, for short calls; see
``modelyard.workers.handover``) when nothing runs or waits: the job is counted as running like
any other, so the cap, the order and ``running()`` hold as if a slot ran it.

Thread safety: every method may be called from any thread; one lock guards the queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work. ``deadline``: ``time.monotonic()`` by which it must start, else
    ``expired(waited_s)`` runs instead of ``run`` (None: no deadline)."""

    key: str
    job_id: int
    run: Callable[[], None]
    expired: Callable[[float], None]
    deadline: float | None = None
    queued_at: float = 0.0


class FairSlots:
    """``threads`` worker threads taking jobs from per-key FIFOs, at most ``per_model`` of
    one key at once, keys served round-robin. See the module docstring."""

    def __init__(self, threads: int, per_model: int | None = None, *, name: str = "infer") -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.per_model = max(1, per_model if per_model is not None else threads - 1)
        # The condition's lock, taken directly where no wait or notify is needed (a
        # Condition's ``with`` is a Python call more; the reader takes it twice per request).
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()
        self._running: dict[str, int] = {}
        self._closing = False
        # The wait locks of the idle threads, the one idle the shortest time last: a job wakes
        # that one (its caches are warm), where a Condition wakes the one idle the longest, so
        # every thread took every ``threads``-th job with cold caches.
        self._idle: list[threading.Lock] = []
        self._waking = 0  # threads woken that have not taken the lock back yet
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; it runs as soon as a slot is free and its model is under its cap."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the execution slots are closed")
            if not job.queued_at:
                job = Job(job.key, job.job_id, job.run, job.expired, job.deadline, time.monotonic())
            self._queues.setdefault(job.key, deque()).append(job)
            # A thread is woken only when one could start this job and none is on its way
            # already (it passes the wake on when it finds more to start: ``_work``). With
            # its model at its cap, the end of one of the model's running jobs starts it
            # (``_finished``: that thread takes the next job itself; an inline job's end wakes
            # one). Else a thread woken for nothing slept again: a context switch and a turn
            # of the GIL each, and at 64 streams every slot thread took turns (issue 18).
            if not self._waking and self._running.get(job.key, 0) < self.per_model:
                self._wake_one()

    def start_inline(self, key: str) -> bool:
        """Count a job of ``key`` as running on the caller's thread, when no job runs or waits
        (so it takes nobody's turn and no model's cap is near); False, and nothing changes,
        else. The caller runs it at once (as ``run_job`` would), then calls
        ``finish_inline``."""
        with self._mutex:
            if self._running or self._queues or self._closing:
                return False
            self._running[key] = 1
            return True

    def finish_inline(self, key: str) -> None:
        """The job of ``key`` started by ``start_inline`` has ended."""
        with self._mutex:
            self._finished(key)
            if self._queues:  # queued while it ran: its end may let the next one start
                self._wake_one()

    def cancel(self, job_id: int) -> Job | None:
        """Withdraw the queued job ``job_id`` and return it; None when it is not queued
        (running, done, or never seen), in which case nothing changes."""
        with self._lock:
            for key, queue in self._queues.items():
                for job in queue:
                    if job.job_id == job_id:
                        queue.remove(job)
                        if not queue:
                            del self._queues[key]
                        return job
        return None

    def running(self, key: str | None = None) -> int:
        with self._lock:
            if key is not None:
                return self._running.get(key, 0)
            return sum(self._running.values())

    def queued(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Run what is queued, wait for everything to finish, then stop the threads."""
        with self._lock:
            self._closing = True
            self._wake_all()
        for worker in self._workers:
            worker.join()
        with self._lock:  # an inline job still running
            while self._running:
                self._lock.wait()

    # -- the threads -----------------------------------------------------------------

    def _next(self) -> Job | None:
        """The first queued job, round-robin over keys, whose key is under its cap; the key
        served goes to the back of the order. Called with the lock held."""
        for key, queue in self._queues.items():
            if self._running.get(key, 0) < self.per_model:
                job = queue.popleft()
                if queue:
                    self._queues.move_to_end(key)
                else:
                    del self._queues[key]
                return job
        return None

    def _runnable(self) -> bool:
        """Whether a queued job could start now. Called with the lock held."""
        return any(self._running.get(key, 0) < self.per_model for key in self._queues)

    def _wake_one(self) -> None:
        """Wake the thread idle the shortest time, if one is. Called with the lock held."""
        if self._idle:
            self._idle.pop().release()
            self._waking += 1

    def _wake_all(self) -> None:
        while self._idle:
            self._idle.pop().release()
            self._waking += 1
        self._lock.notify_all()  # close() waiting for inline jobs

    def _work(self) -> None:
        done: Job | None = None  # the job this thread finished last, accounted for below
        waiter = threading.Lock()  # released by whoever takes it off self._idle
        waiter.acquire()
        while True:
            with self._mutex:
                if done is not None:
                    self._finished(done.key)
                job = self._next()
                woken = False
                while job is None:
                    if self._closing and not self._queues:
                        return
                    self._idle.append(waiter)
                    self._mutex.release()
                    try:
                        waiter.acquire()
                    finally:
                        self._mutex.acquire()
                        self._waking -= 1
                    woken = True
                    job = self._next()
                self._running[job.key] = self._running.get(job.key, 0) + 1
                if woken and self._idle and self._runnable():
                    self._wake_one()  # more work that can start now: pass the wake on
            run_job(job)
            done = job

    def _finished(self, key: str) -> None:
        """Account for the end of a job of ``key``. Called with the lock held, by the thread
        that ran it, which then takes the next job itself: a job's end makes at most one more
        queued job runnable (its key's), so no other thread needs waking, except to exit when
        closing.
        (Waking every idle thread on every job's end cost a context switch and a turn of the
        GIL per idle thread per request.)"""
        self._running[key] -= 1
        if not self._running[key]:
            del self._running[key]
        if self._closing:
            self._wake_all()


def run_job(job: Job) -> None:
    """Run ``job``, or its ``expired`` when its deadline has passed; a failure is logged (the
    job's own guard answers its caller), never raised."""
    try:
        now = time.monotonic()
        if job.deadline is not None and now >= job.deadline:
            job.expired(now - job.queued_at)
        else:
            job.run()
    except Exception:
        log.exception("job %s of %r failed", job.job_id, job.key)
