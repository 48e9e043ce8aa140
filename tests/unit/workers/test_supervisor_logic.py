"""The supervisor's rules, against a fake launcher and a fake clock: no processes, no sleeps.

What a user would notice, in virtual time: a dead worker comes back after the restart delay with
its models; the delays double up to the cap; a model whose load keeps killing its worker is given
up with the reason while the device's other models keep serving; a death while serving is charged
to the models with requests in flight; a device whose worker cannot start is FAILED; a worker
that stayed up ``stable_seconds`` starts the counts afresh; stopping during a restart leaves no
new worker; the heartbeat kills a stuck worker (and only a stuck one) and it is restarted.

The fake worker answers protocol messages as a real one would (``Loaded``, ``Outputs``,
``Done``), and ends as a real one does: its requests in flight fail with ``WorkerDied`` and
``WorkerEvents.exited`` follows in the same loop turn when it died (the local launcher reads the
end of the stream of a process that has already exited), a few turns later when the heartbeat
killed it (the end of the stream is read by another task).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from modelyard.config.schema import ModelConfig, Platform
from modelyard.devices import DeviceTarget
from modelyard.errors import Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.loading import LoadRequest
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.workers.heartbeat import HeartbeatPolicy
from modelyard.workers.launcher import (
    ProcessSample,
    WorkerDied,
    WorkerEvents,
    WorkerHandle,
    WorkerSpec,
)
from modelyard.workers.messages import Done, Infer, Load, Loaded, Message, Outputs, Shutdown, Unload
from modelyard.workers.restart import RestartPolicy
from modelyard.workers.status import WorkerState
from modelyard.workers.supervisor import DeviceWorker

T = TypeVar("T")
SIGNATURE = Signature(
    (TensorSpec("x", DataType.FP32, (-1, 2)),), (TensorSpec("y", DataType.FP32, (-1, 2)),)
)
NO_HEARTBEAT = HeartbeatPolicy(interval_s=0)
X = {"x": np.ones((1, 2), np.float32)}


class FakeClock:
    """Virtual time: ``sleep`` waits until ``advance`` moves the clock past its end."""

    def __init__(self) -> None:
        self.now = 100.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    def next_wakeup(self) -> float | None:
        """When the earliest sleeper wakes; None when nothing sleeps."""
        while self._sleepers and self._sleepers[0][2].done():  # cancelled
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking each sleeper at its own moment."""
        await self.advance_to(self.now + seconds)

    async def advance_to(self, end: float) -> None:
        await settle()  # tasks scheduled but not yet run may be about to sleep
        while self._sleepers and self._sleepers[0][0] <= end:
            due, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = end
        await settle()


async def settle() -> None:
    """Let every task that can run do so (the fakes never wait on anything real)."""
    for _ in range(50):
        await asyncio.sleep(0)


class FakeWorker:
    """A ``WorkerHandle`` whose worker lives in the test: it answers or dies as told."""

    def __init__(self, launcher: FakeLauncher, pid: int, events: WorkerEvents) -> None:
        self._launcher = launcher
        self._events = events
        self._ids = itertools.count(1)
        self._pending: list[asyncio.Future[Message]] = []
        self._closed = asyncio.Event()
        self._alive = True
        self.pid = pid
        self.answers_pings = True
        self.status = "sleeping"
        self.cpu_s = 1.0
        self.cpu_per_probe = 0.0
        self.probes = 0
        self.exit_reason = ""

    @property
    def alive(self) -> bool:
        return self._alive

    async def request(self, message_of: Callable[[int], Message]) -> Message:
        if not self._alive:
            raise WorkerDied(f"worker (pid {self.pid}) is not running")
        message = message_of(next(self._ids))
        self._launcher.sent.append(message)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        try:
            self._answer(message, future)
            return await future
        finally:
            self._pending.remove(future)

    async def infer(
        self,
        model: str,
        version: int,
        tensors: Mapping[str, np.ndarray],
        signature_name: str | None,
        budget_ms: float | None,
    ) -> Message:
        return await self.request(
            lambda rid: Infer(rid, model, version, tensors, signature_name, budget_ms)
        )

    def _answer(self, message: Message, future: asyncio.Future[Message]) -> None:
        rid = message.request_id
        if isinstance(message, Load):
            if message.model in self._launcher.crash_on_load:
                self.die("was killed by SIGKILL")
            else:
                future.set_result(Loaded(rid, SIGNATURE, 1000, "cpu"))
        elif isinstance(message, Infer):
            if not self._launcher.hold_infers:
                future.set_result(Outputs(rid, {"y": np.asarray(message.tensors["x"])}))
        elif isinstance(message, Unload | Shutdown):
            future.set_result(Done(rid))

    def die(self, how: str, *, exited_later: bool = False) -> None:
        """The worker ends: requests in flight fail, and ``exited`` is called."""
        if not self._alive:
            return
        self._alive = False
        self.exit_reason = f"worker for device sim0 (pid {self.pid}) {how}"
        self._fail_pending(self.exit_reason)
        if exited_later:
            asyncio.get_running_loop().call_soon(self._exited)
        else:
            self._exited()

    def _exited(self) -> None:
        self._events.exited(self.exit_reason)
        self._closed.set()

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending:
            if not future.done():
                future.set_exception(WorkerDied(reason))

    def ping(self) -> None:
        self._launcher.pings += 1
        if self.answers_pings:
            self._events.heard()

    def probe(self) -> ProcessSample | None:
        self.probes += 1
        self.cpu_s += self.cpu_per_probe
        return ProcessSample(self.status, self.cpu_s)

    def kill(self, reason: str | None = None) -> None:
        if reason is not None and self._alive:
            self._fail_pending(reason)
            self.die(f"was killed by SIGKILL ({reason})", exited_later=True)
        else:
            self.die("was killed by SIGKILL")

    async def stop(self, wait_s: float = 10.0) -> None:
        self._alive = False
        self._launcher.stopped.append(self.pid)
        self._fail_pending("stopped")
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class FakeLauncher:
    """A ``WorkerLauncher`` that starts ``FakeWorker``s and remembers when (on the clock)."""

    def __init__(self, clock: FakeClock, *, start_failures: int = 0) -> None:
        self.clock = clock
        self.start_failures = start_failures
        self.crash_on_load: set[str] = set()
        self.hold_infers = False
        self.workers: list[FakeWorker] = []
        self.launched_at: list[float] = []
        self.failed_at: list[float] = []
        self.sent: list[Message] = []
        self.stopped: list[int] = []
        self.pings = 0

    async def launch(self, spec: WorkerSpec, events: WorkerEvents) -> WorkerHandle:
        assert spec.device == "sim0"
        if self.start_failures > 0:
            self.start_failures -= 1
            self.failed_at.append(self.clock.now)
            raise Unavailable(f"worker for device {spec.device} did not start (TimeoutError)")
        worker = FakeWorker(self, 1000 + len(self.workers), events)
        self.workers.append(worker)
        self.launched_at.append(self.clock.now)
        return worker

    @property
    def current(self) -> FakeWorker:
        return self.workers[-1]

    def loads_of(self, model: str) -> int:
        return sum(isinstance(m, Load) and m.model == model for m in self.sent)


class Listener:
    """The controller's side: which replicas went down, came back, were given up."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def replica_down(self, key: VersionKey, device: str, reason: str) -> None:
        self.events.append(("down", str(key), reason))

    def replica_up(self, key: VersionKey, device: str) -> None:
        self.events.append(("up", str(key), ""))

    def replica_failed(self, key: VersionKey, device: str, reason: str) -> None:
        self.events.append(("failed", str(key), reason))

    def of(self, kind: str, key: str) -> list[str]:
        return [reason for k, name, reason in self.events if k == kind and name == key]


class Rig:
    """One device's supervisor wired to the fakes."""

    def __init__(self, start_failures: int = 0, **policy: Any) -> None:
        policy.setdefault("heartbeat", NO_HEARTBEAT)
        self.clock = FakeClock()
        self.launcher = FakeLauncher(self.clock, start_failures=start_failures)
        self.listener = Listener()
        self.worker = DeviceWorker(
            "sim0",
            DeviceTarget.cpu(),
            policy=RestartPolicy(**policy),
            listener=self.listener,
            launcher=self.launcher,
            clock=self.clock,
        )

    async def until(self, awaitable: Awaitable[T], limit_s: float = 120) -> T:
        """Advance the clock from wake-up to wake-up until ``awaitable`` is done; its result
        (or exception)."""
        task = asyncio.ensure_future(awaitable)
        give_up_at = self.clock.now + limit_s
        for _ in range(10_000):
            await settle()
            wakeup = self.clock.next_wakeup()
            if task.done() or wakeup is None or wakeup > give_up_at:
                break
            await self.clock.advance_to(wakeup)
        assert task.done(), f"still waiting after {self.clock.now - give_up_at + limit_s} s"
        return task.result()

    async def until_serving(self, workers: int) -> None:
        """Advance the clock until the ``workers``-th worker has started and is READY."""
        give_up_at = self.clock.now + 120
        for _ in range(10_000):
            await settle()
            started = len(self.launcher.workers)
            if started >= workers and self.worker.state is WorkerState.READY:
                return
            wakeup = self.clock.next_wakeup()
            assert wakeup is not None, (started, self.worker.state)
            assert wakeup < give_up_at, (started, self.worker.state)
            await self.clock.advance_to(wakeup)

    async def load(self, model: str) -> None:
        await self.until(self.worker.load(_request(model)))

    async def load_error(self, model: str) -> BaseException:
        with pytest.raises(Unavailable) as caught:
            await self.until(self.worker.load(_request(model)))
        return caught.value

    def state(self) -> WorkerState:
        return self.worker.state

    def crashes(self, model: str) -> int:
        return self.worker.status().models[VersionKey(model, 1)].crashes

    async def infer(self, model: str) -> dict[str, np.ndarray]:
        return await self.worker.infer(VersionKey(model, 1), X)


def _request(model: str) -> LoadRequest:
    return LoadRequest(
        key=VersionKey(model, 1),
        version_dir=Path(f"/models/{model}/1"),
        platform=Platform.ONNX,
        device=DeviceTarget.cpu(),
        declared=None,
        config=ModelConfig(name=model, base_path=Path(f"/models/{model}")),
        device_name="sim0",
    )


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# -- restart and back-off -------------------------------------------------------------------


def test_a_dead_worker_is_restarted_after_the_delay_with_its_models() -> None:
    async def scenario() -> None:
        rig = Rig(initial_delay_s=0.2)
        await rig.load("a")
        first = rig.launcher.current
        first.die("was killed by SIGKILL")
        await settle()
        assert rig.state() is WorkerState.RESTARTING
        assert rig.listener.of("down", "a:1") == [first.exit_reason]
        with pytest.raises(Unavailable, match="not loaded on device sim0 right now"):
            await rig.infer("a")
        await rig.clock.advance(0.19)
        assert len(rig.launcher.workers) == 1  # not before the delay
        await rig.clock.advance(0.02)
        assert len(rig.launcher.workers) == 2
        assert rig.state() is WorkerState.READY
        assert rig.worker.restarts == 1
        assert rig.worker.pid == rig.launcher.current.pid != first.pid
        assert rig.launcher.loads_of("a") == 2
        assert rig.listener.of("up", "a:1") == [""]
        assert (await rig.infer("a"))["y"].shape == (1, 2)
        assert rig.worker.status().last_exit == first.exit_reason

    run(scenario)


def test_restart_delays_double_up_to_the_cap() -> None:
    async def scenario() -> None:
        rig = Rig(initial_delay_s=0.2, max_delay_s=1.0, max_crashes=100)
        await rig.load("a")
        gaps = []  # from each death to the restart that followed it
        for _ in range(6):
            died_at = rig.clock.now
            rig.launcher.current.die("was killed by SIGKILL")
            await rig.until_serving(len(rig.launcher.workers) + 1)
            gaps.append(rig.launcher.launched_at[-1] - died_at)
        assert gaps == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
        assert rig.worker.restarts == 6

    run(scenario)


def test_a_worker_up_for_stable_seconds_starts_the_counts_afresh() -> None:
    async def scenario() -> None:
        rig = Rig(initial_delay_s=0.2, stable_seconds=10.0, max_crashes=3)
        await rig.load("a")
        rig.launcher.hold_infers = True
        for _ in range(2):  # two deaths in a row with a request of "a" in flight
            task = asyncio.ensure_future(rig.infer("a"))
            await settle()
            rig.launcher.current.die("was killed by SIGKILL")
            await rig.until(asyncio.gather(task, return_exceptions=True))
            await rig.until_serving(len(rig.launcher.workers) + 1)
        assert rig.crashes("a") == 2
        await rig.clock.advance(10.0)  # up long enough: it has recovered
        task = asyncio.ensure_future(rig.infer("a"))
        await settle()
        died_at = rig.clock.now
        rig.launcher.current.die("was killed by SIGKILL")
        await rig.until_serving(4)
        assert rig.crashes("a") == 1  # not 3: not given up
        assert rig.launcher.launched_at[-1] - died_at == pytest.approx(0.2)  # not 0.8
        assert rig.listener.of("failed", "a:1") == []
        await asyncio.gather(task, return_exceptions=True)

    run(scenario)


# -- crash blame and give-up ----------------------------------------------------------------


def test_a_load_that_keeps_killing_its_worker_is_given_up_and_the_others_serve() -> None:
    async def scenario() -> None:
        rig = Rig(max_crashes=3)
        await rig.load("light")
        rig.launcher.crash_on_load.add("heavy")
        error = await rig.load_error("heavy")
        assert "given up: its load crashed the worker of device sim0 3 times in a row" in str(error)
        assert "was killed by SIGKILL" in str(error)
        await rig.clock.advance(5.0)  # the worker comes back for the device's other model
        assert rig.launcher.loads_of("heavy") == 3  # no fourth try
        assert len(rig.launcher.workers) == 4
        assert rig.state() is WorkerState.READY
        assert VersionKey("heavy", 1) not in rig.worker.status().models
        assert rig.crashes("light") == 0  # nothing in flight: never blamed
        assert rig.listener.of("failed", "light:1") == []
        assert (await rig.infer("light"))["y"].shape == (1, 2)

    run(scenario)


def test_a_reload_that_kills_the_worker_is_charged_to_that_model() -> None:
    async def scenario() -> None:
        rig = Rig(max_crashes=3)
        await rig.load("a")
        await rig.load("b")
        rig.launcher.crash_on_load.add("a")  # e.g. its file was replaced by a poisonous one
        rig.launcher.current.die("was killed by SIGKILL")
        await rig.clock.advance(30.0)
        failed = rig.listener.of("failed", "a:1")
        assert len(failed) == 1, rig.listener.events
        assert "given up" in failed[0]
        assert rig.state() is WorkerState.READY
        assert VersionKey("a", 1) not in rig.worker.status().models
        assert rig.crashes("b") == 0
        assert (await rig.infer("b"))["y"].shape == (1, 2)

    run(scenario)


def test_a_death_while_serving_is_charged_to_the_models_with_requests_in_flight() -> None:
    async def scenario() -> None:
        rig = Rig(max_crashes=3)
        await rig.load("a")
        await rig.load("b")
        rig.launcher.hold_infers = True
        for death in range(1, 4):
            task = asyncio.ensure_future(rig.infer("a"))
            await settle()
            victim = rig.launcher.current
            victim.die("was killed by SIGKILL")
            await settle()
            # The request in flight fails at once with the reason: a 503, not a hang.
            with pytest.raises(WorkerDied, match="was killed by SIGKILL"):
                await task
            if death < 3:
                assert rig.crashes("a") == death
                assert rig.crashes("b") == 0
                await rig.until_serving(death + 1)
        await rig.clock.advance(5.0)
        failed = rig.listener.of("failed", "a:1")
        assert len(failed) == 1
        assert "3 times in a row" in failed[0]
        assert rig.listener.of("failed", "b:1") == []
        rig.launcher.hold_infers = False
        assert (await rig.infer("b"))["y"].shape == (1, 2)
        with pytest.raises(Unavailable, match="not loaded"):
            await rig.infer("a")

    run(scenario)


# -- start failures -------------------------------------------------------------------------


def test_a_worker_that_cannot_start_fails_the_device_after_max_start_failures() -> None:
    async def scenario() -> None:
        rig = Rig(start_failures=100, initial_delay_s=0.2, max_start_failures=5)
        error = await rig.load_error("a")
        assert "worker for device sim0 could not start" in str(error)
        assert "did not start (TimeoutError)" in str(error)
        assert rig.state() is WorkerState.FAILED
        failed_at = rig.launcher.failed_at
        gaps = [later - earlier for earlier, later in itertools.pairwise(failed_at)]
        assert gaps == pytest.approx([0.2, 0.4, 0.8, 1.6])  # five tries, then no more
        await rig.clock.advance(60.0)
        assert len(failed_at) == 5
        assert rig.worker.status().state is WorkerState.FAILED

    run(scenario)


def test_a_worker_that_starts_on_a_later_try_serves() -> None:
    async def scenario() -> None:
        rig = Rig(start_failures=2, max_start_failures=5)
        await rig.load("a")
        assert rig.state() is WorkerState.READY
        assert len(rig.launcher.failed_at) == 2
        assert len(rig.launcher.workers) == 1
        assert (await rig.infer("a"))["y"].shape == (1, 2)

    run(scenario)


# -- stopping -------------------------------------------------------------------------------


def test_stop_during_a_restart_delay_starts_no_new_worker() -> None:
    async def scenario() -> None:
        rig = Rig(initial_delay_s=1.0)
        await rig.load("a")
        rig.launcher.crash_on_load.add("b")
        waiting = asyncio.ensure_future(rig.worker.load(_request("b")))  # will wait for restart
        await settle()
        assert rig.state() is WorkerState.RESTARTING
        await rig.clock.advance(0.5)
        await rig.worker.stop(wait_s=1.0)
        await rig.clock.advance(60.0)
        assert len(rig.launcher.workers) == 1
        assert rig.state() is WorkerState.STOPPED
        with pytest.raises(Unavailable, match="stopped"):
            await waiting

    run(scenario)


def test_once_stopping_a_dying_worker_is_not_restarted() -> None:
    async def scenario() -> None:
        rig = Rig(initial_delay_s=1.0)
        await rig.load("a")
        rig.launcher.current.die("was killed by SIGKILL")
        await settle()
        rig.worker.stop_restarting()  # a restart under way is cancelled
        assert rig.state() is WorkerState.STOPPED
        await rig.clock.advance(60.0)
        assert len(rig.launcher.workers) == 1

        rig2 = Rig(initial_delay_s=1.0)
        await rig2.load("a")
        rig2.worker.stop_restarting()
        rig2.launcher.current.die("was killed by SIGKILL")  # dies after: not restarted either
        await rig2.clock.advance(60.0)
        assert len(rig2.launcher.workers) == 1
        assert rig2.state() is WorkerState.STOPPED
        await rig.worker.stop()
        await rig2.worker.stop()

    run(scenario)


# -- the heartbeat --------------------------------------------------------------------------

HEARTBEAT = HeartbeatPolicy(interval_s=0.5, timeout_s=3.0, busy_timeout_s=30.0, idle_cpu_s=0.05)


def test_a_stuck_worker_is_killed_with_the_reason_and_restarted() -> None:
    async def scenario() -> None:
        rig = Rig(heartbeat=HEARTBEAT, initial_delay_s=0.2)
        await rig.load("a")
        stuck = rig.launcher.current
        rig.launcher.hold_infers = True
        task = asyncio.ensure_future(rig.infer("a"))
        await settle()
        stuck.answers_pings = False
        stuck.status = "stopped"  # SIGSTOP
        await rig.clock.advance(3.0)
        assert stuck.alive  # a pause shorter than the timeout is not judged
        await rig.clock.advance(0.5)
        assert not stuck.alive
        with pytest.raises(WorkerDied) as caught:
            await task
        message = str(caught.value)
        assert "worker for device sim0 (pid 1000) stopped answering" in message
        assert "no answer to heartbeats for 3.5 s (its process is stopped)" in message
        rig.launcher.hold_infers = False
        await rig.clock.advance(0.5)
        assert len(rig.launcher.workers) == 2
        assert rig.state() is WorkerState.READY
        assert (await rig.infer("a"))["y"].shape == (1, 2)
        await rig.worker.stop()

    run(scenario)


def test_a_silent_worker_that_keeps_working_is_given_the_busy_timeout() -> None:
    async def scenario() -> None:
        rig = Rig(heartbeat=HEARTBEAT)
        await rig.load("a")
        busy = rig.launcher.current
        busy.answers_pings = False
        busy.status = "running"
        busy.cpu_per_probe = 0.5  # a call that holds the GIL: it uses CPU, it cannot answer
        await rig.clock.advance(29.0)
        assert busy.alive
        assert rig.state() is WorkerState.READY
        await rig.clock.advance(1.5)
        assert not busy.alive
        assert "kept using CPU" in busy.exit_reason
        await rig.worker.stop()

    run(scenario)


def test_a_worker_that_answers_is_never_probed() -> None:
    async def scenario() -> None:
        rig = Rig(heartbeat=HEARTBEAT)
        await rig.load("a")
        await rig.clock.advance(60.0)
        worker = rig.launcher.current
        assert worker.alive
        assert worker.probes == 0
        assert rig.launcher.pings == pytest.approx(120, abs=2)  # one every 0.5 s
        await rig.worker.stop()
        assert rig.launcher.stopped == [worker.pid]
        pings = rig.launcher.pings
        await rig.clock.advance(5.0)
        assert rig.launcher.pings == pings  # the heartbeat ended with the worker

    run(scenario)
