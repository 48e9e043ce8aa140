"""The heartbeat's verdict on a silent worker, on plain values: stuck when it is stopped or idle
while silent, busy (not killed) while it keeps working, never judged while it answers."""

from __future__ import annotations

import pytest

from modelyard.devices import DeviceTarget
from modelyard.workers.environment import is_allowed, worker_environment
from modelyard.workers.heartbeat import HeartbeatPolicy, HeartbeatWatch, Verdict
from modelyard.workers.launcher import ProcessSample

POLICY = HeartbeatPolicy(interval_s=0.5, timeout_s=3.0, busy_timeout_s=30.0, idle_cpu_s=0.05)


class Process:
    """What the OS would say: a status and a CPU clock the test advances."""

    def __init__(self, status: str = "sleeping") -> None:
        self.status = status
        self.cpu_s = 10.0
        self.samples = 0
        self.gone = False

    def __call__(self) -> ProcessSample | None:
        self.samples += 1
        return None if self.gone else ProcessSample(self.status, self.cpu_s)


def _silent_until(watch: HeartbeatWatch, proc: Process, end: float, cpu_per_s: float) -> Verdict:
    """Judge every 0.5 s from 0 to ``end`` while the process uses ``cpu_per_s``; last verdict."""
    verdict = Verdict.ALIVE
    t = 0.0
    while t < end:
        t = round(t + POLICY.interval_s, 3)
        proc.cpu_s += cpu_per_s * POLICY.interval_s
        verdict = watch.judge(t, proc)
        if verdict is Verdict.STUCK:
            return verdict
    return verdict


def test_a_worker_that_answers_is_alive_and_never_sampled() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process()
    for tick in range(1, 200):
        now = tick * POLICY.interval_s
        watch.heard(now - 0.01)  # every ping answered within 10 ms
        assert watch.judge(now, proc) is Verdict.ALIVE
    assert proc.samples == 0


def test_a_stopped_worker_is_stuck_once_the_timeout_passes_not_before() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("stopped")
    assert watch.judge(2.9, proc) is Verdict.ALIVE
    assert watch.judge(3.1, proc) is Verdict.STUCK
    assert "stopped" in watch.why


def test_an_idle_silent_worker_is_stuck_after_the_timeout() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("sleeping")
    assert _silent_until(watch, proc, 2.9, cpu_per_s=0.0) is Verdict.ALIVE
    assert _silent_until(watch, proc, 3.6, cpu_per_s=0.0) is Verdict.STUCK
    assert "CPU" in watch.why


def test_a_silent_worker_that_keeps_working_is_busy_until_the_busy_timeout() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("running")
    assert _silent_until(watch, proc, 29.5, cpu_per_s=1.0) is Verdict.BUSY
    assert "busy" in watch.why
    assert _silent_until(watch, proc, 31.0, cpu_per_s=1.0) is Verdict.STUCK


def test_an_answer_ends_the_silence_and_its_cpu_baseline() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("running")
    assert _silent_until(watch, proc, 5.0, cpu_per_s=1.0) is Verdict.BUSY
    watch.heard(5.0)
    assert watch.judge(5.4, proc) is Verdict.ALIVE
    # A new silence is judged on the CPU it uses itself, not on the earlier busy spell.
    for now in (6.0, 7.0, 8.0, 8.6):
        verdict = watch.judge(now, proc)  # the CPU clock stands still now
    assert verdict is Verdict.STUCK


@pytest.mark.parametrize("status", ["zombie", "dead", "tracing-stop"])
def test_a_process_that_cannot_run_is_stuck(status: str) -> None:
    watch = HeartbeatWatch(POLICY, 0.0)
    assert watch.judge(3.5, Process(status)) is Verdict.STUCK


def test_a_vanished_process_is_left_to_the_end_of_its_stream_until_the_timeout() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process()
    proc.gone = True
    assert watch.judge(1.0, proc) is Verdict.ALIVE  # its death is the read loop's news
    assert watch.judge(3.1, proc) is Verdict.STUCK  # a stream that never ends is not
    assert "gone" in watch.why


def test_the_worker_environment_keeps_what_frameworks_need_and_drops_secrets() -> None:
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/op",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/src",
        "LD_LIBRARY_PATH": "/opt/cuda/lib64",
        "OMP_NUM_THREADS": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MODELYARD_INTRA_OP_THREADS": "1",
        "MODELYARD_MANAGEMENT_TOKEN": "s3cret",
        "AWS_SECRET_ACCESS_KEY": "x",
        "GITHUB_TOKEN": "y",
        "TF_API_TOKEN": "z",
        "DATABASE_URL": "postgres://u:p@h/db",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    cpu = worker_environment(parent, DeviceTarget.cpu())
    assert "s3cret" not in cpu.values()
    for secret in ("MODELYARD_MANAGEMENT_TOKEN", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN",
                   "TF_API_TOKEN", "DATABASE_URL"):  # fmt: skip
        assert secret not in cpu
    kept = ["PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS"]
    for name in [*kept, "TF_CPP_MIN_LOG_LEVEL", "MODELYARD_INTRA_OP_THREADS"]:
        assert cpu[name] == parent[name]
    assert cpu["CUDA_VISIBLE_DEVICES"] == ""  # a CPU worker sees no GPU
    gpu = worker_environment(parent, DeviceTarget.parse("cuda:1"))
    assert (gpu["CUDA_VISIBLE_DEVICES"], gpu["CUDA_DEVICE_ORDER"]) == ("1", "PCI_BUS_ID")
    assert not is_allowed("ORT_SECRET")
    assert is_allowed("ORT_LOGGING_LEVEL")


def test_a_silent_worker_waiting_on_the_disk_is_busy_not_stuck() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("disk-sleep")
    assert _silent_until(watch, proc, 10.0, cpu_per_s=0.0) is Verdict.BUSY


def test_a_silence_first_seen_past_the_timeout_is_measured_before_it_is_judged() -> None:
    """The front end's own loop was held (a loaded machine, a server's start-up work): the
    first look at the worker comes when its silence is already past the timeout. Judged on a
    CPU sample of zero length it was "used 0.00 s of CPU" and killed; now it is measured."""
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("sleeping")
    assert watch.judge(0.5, proc) is Verdict.ALIVE  # answered in time: not sampled
    assert watch.judge(3.6, proc) is Verdict.ALIVE  # the first sample: only a baseline
    watch.heard(3.7)  # its answer, read once the loop ran again
    assert watch.judge(4.1, proc) is Verdict.ALIVE
    # One that stays silent and idle is still stuck, a CPU window (timeout / 2) later.
    stuck, idle = HeartbeatWatch(POLICY, 0.0), Process("sleeping")
    verdicts = [stuck.judge(now, idle) for now in (0.5, 3.6, 4.1, 4.6, 5.2)]
    assert verdicts == [Verdict.ALIVE] * 4 + [Verdict.STUCK]
    assert "used 0.00 s of CPU in 1.6 s while silent (sleeping)" in stuck.why


def test_a_starting_worker_is_given_the_start_grace_but_a_bounded_one() -> None:
    watch, proc = HeartbeatWatch(POLICY, 0.0), Process("sleeping")
    watch.starting(0.0)
    assert _silent_until(watch, proc, 9.5, cpu_per_s=0.0) is Verdict.BUSY
    assert "starting" in watch.why
    assert watch.judge(10.5, proc) is Verdict.STUCK  # start_grace_s (10 s) bounds it
    # Stopped while starting is stuck as ever, once the timeout passes.
    stopped = HeartbeatWatch(POLICY, 0.0)
    stopped.starting(0.0)
    assert stopped.judge(2.9, Process("stopped")) is Verdict.ALIVE
    assert stopped.judge(3.1, Process("stopped")) is Verdict.STUCK
