"""A worker's execution slots: a cap per model, a fair queue, cancel and deadlines. Real
threads; every wait is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modelyard.devices import DeviceTarget
from modelyard.workers.host import per_model_slots
from modelyard.workers.slots import FairSlots, Job

WAIT_S = 5.0


class Jobs:
    """Jobs that record when they ran, and can be held at a gate."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.expired: list[str] = []
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def job(
        self, key: str, job_id: int, *, held: bool = False, deadline: float | None = None
    ) -> Job:
        def run() -> None:
            with self._lock:
                self.order.append(f"{key}{job_id}")
            if held:
                assert self.gate.wait(WAIT_S)

        def expired(waited_s: float) -> None:
            with self._lock:
                self.expired.append(f"{key}{job_id}")

        return Job(key, job_id, run, expired, deadline)


def _until(check: Callable[[], bool]) -> None:
    end = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_one_model_cannot_take_every_slot() -> None:
    jobs = Jobs()
    slots = FairSlots(4)  # at most 3 of one model
    try:
        for i in range(4):
            slots.submit(jobs.job("slow", i, held=True))
        _until(lambda: slots.running("slow") == 3)
        slots.submit(jobs.job("fast", 9))
        _until(lambda: "fast9" in jobs.order)  # while all three slow ones are held
        assert slots.running("slow") == 3
        assert slots.queued() == 1  # the fourth slow one waits for a slow one to end
    finally:
        jobs.gate.set()
        slots.close()
    assert sorted(jobs.order) == ["fast9", "slow0", "slow1", "slow2", "slow3"]


def test_queued_work_is_served_round_robin_between_models() -> None:
    jobs = Jobs()
    slots = FairSlots(1, per_model=1)
    slots.submit(jobs.job("a", 0, held=True))
    _until(lambda: slots.running() == 1)
    for i in range(1, 4):
        slots.submit(jobs.job("a", i))
    slots.submit(jobs.job("b", 1))
    slots.submit(jobs.job("b", 2))
    jobs.gate.set()
    slots.close()
    assert jobs.order == ["a0", "a1", "b1", "a2", "b2", "a3"]


def test_cancel_withdraws_queued_work_only() -> None:
    jobs = Jobs()
    slots = FairSlots(1, per_model=1)
    slots.submit(jobs.job("a", 0, held=True))
    _until(lambda: slots.running() == 1)
    slots.submit(jobs.job("a", 1))
    withdrawn = slots.cancel(1)
    assert withdrawn is not None
    assert withdrawn.job_id == 1
    assert slots.cancel(0) is None  # running: it finishes
    assert slots.cancel(42) is None  # unknown
    jobs.gate.set()
    slots.close()
    assert jobs.order == ["a0"]


def test_work_whose_deadline_passed_while_queued_is_not_run() -> None:
    jobs = Jobs()
    slots = FairSlots(1, per_model=1)
    slots.submit(jobs.job("a", 0, held=True))
    _until(lambda: slots.running() == 1)
    slots.submit(jobs.job("a", 1, deadline=time.monotonic() + 0.01))
    slots.submit(jobs.job("a", 2, deadline=time.monotonic() + 60))
    time.sleep(0.05)
    jobs.gate.set()
    slots.close()
    assert jobs.order == ["a0", "a2"]
    assert jobs.expired == ["a1"]


@pytest.mark.parametrize(
    ("threads", "target", "cores", "expected"),
    [
        (4, "cuda:0", 2, 3),  # a GPU: every slot but one
        (4, "cpu", 16, 3),
        (4, "cpu", 2, 1),  # a CPU with 2 cores: one core stays free for other models
        (1, "cpu", 16, 1),  # never 0
        (1, "cuda:0", 16, 1),
    ],
)
def test_how_many_slots_one_model_may_hold(
    threads: int, target: str, cores: int, expected: int
) -> None:
    assert per_model_slots(threads, DeviceTarget.parse(target), cores) == expected


def _noop(waited_s: float) -> None:
    pass


def test_one_request_at_a_time_runs_on_the_thread_that_ran_the_last_one() -> None:
    """The thread idle the shortest time takes the next job (its caches are warm): requests
    sent one after another do not rotate over every slot thread."""
    slots = FairSlots(4, 3)
    names: list[str] = []
    for job_id in range(12):
        ran = threading.Event()

        def run(ran: threading.Event = ran) -> None:
            names.append(threading.current_thread().name)
            ran.set()

        slots.submit(Job("m", job_id, run, _noop))
        assert ran.wait(WAIT_S)
        _until(lambda: slots.running() == 0)  # its thread is idle again
    slots.close()
    assert len(set(names)) == 1, names


def test_a_job_run_inline_counts_as_running_and_holds_back_the_slots() -> None:
    """``start_inline`` is granted only when nothing runs or waits; while the caller runs the
    job, it counts against its model's cap like a slot's job; queued work starts at its end."""
    slots = FairSlots(2, 1)
    jobs = Jobs()
    assert slots.start_inline("a")
    assert slots.running("a") == 1
    assert not slots.start_inline("b")  # one inline job at a time, and only on idle slots
    slots.submit(jobs.job("a", 1))  # over a's cap of 1 while the inline job runs
    time.sleep(0.05)
    assert jobs.order == []
    assert slots.queued() == 1
    slots.finish_inline("a")
    _until(lambda: jobs.order == ["a1"])
    _until(lambda: slots.running() == 0)
    assert slots.start_inline("b")  # idle again: granted
    slots.finish_inline("b")
    slots.close()


def _switches(thread: threading.Thread) -> int:
    """The voluntary context switches (sleeps) of ``thread`` so far, from /proc."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_idle_threads_sleep_on_while_one_models_requests_queue_at_its_cap() -> None:
    """Requests of one model arriving while its one allowed job runs wait for that job's
    thread: no other thread is woken for them (each such wake-up was a context switch and a
    turn of the GIL per request at 64 streams, for nothing)."""
    slots = FairSlots(4, 1, name="capped")
    threads = [t for t in threading.enumerate() if t.name.startswith("capped-")]
    assert len(threads) == 4
    ran: list[str] = []

    def run() -> None:
        ran.append(threading.current_thread().name)
        time.sleep(0.004)  # the job runs while the next requests arrive

    before = {t.name: _switches(t) for t in threads}
    for job_id in range(40):
        slots.submit(Job("m", job_id, run, _noop))
        time.sleep(0.002)
    _until(lambda: len(ran) == 40)
    woken = sum(_switches(t) - before[t.name] for t in threads if t.name not in ran)
    slots.close()
    assert len(set(ran)) == 1, set(ran)  # one thread ran them all, one after another
    assert woken <= 2, f"idle threads woke {woken} times for requests they could not run"
