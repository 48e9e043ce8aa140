"""The data plane's deadlines and per-device in-flight budgets, over fake servables."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import numpy as np
import pytest

from modelyard.config import Platform
from modelyard.deadlines import Deadline, DeadlinePolicy
from modelyard.errors import DeadlineExceeded, ResourceExhausted
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
from modelyard.lifecycle.states import ModelState
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.tensors import DataType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, 1)),),
    outputs=(TensorSpec("y", DataType.FP32, (-1, 1)),),
)
X = {"x": np.ones((1, 1), np.float32)}


class Slow:
    """Takes ``seconds``; records whether a call was cancelled before it finished."""

    signature = SIG
    signatures = {"serving_default": SIG}

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = 0

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {"y": inputs["x"]}

    async def close(self) -> None:
        pass


def _plane(models: dict[str, tuple[Slow, str]], **kwargs: object) -> DataPlane:
    registry = ModelRegistry()
    for name, (model, device) in models.items():
        entry = VersionEntry(VersionKey(name, 1), Platform.ONNX)
        entry.transition(ModelState.LOADING)
        entry.signature = SIG
        entry.replicas = [Replica(model, device)]
        entry.transition(ModelState.AVAILABLE)
        registry.add(entry)
    plane = DataPlane(registry, **kwargs)  # type: ignore[arg-type]
    plane.started = True
    return plane


def test_past_its_deadline_a_request_is_answered_and_its_work_cancelled() -> None:
    model = Slow(10.0)
    plane = _plane({"m": (model, "gpu0")}, deadline_policy=DeadlinePolicy(100))

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            await plane.infer(ModelRef("m"), X)
        assert "deadline of 100 ms (--request-timeout-ms)" in info.value.message
        assert "queued or running on device gpu0" in info.value.message
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert 0.09 <= took < 1.0
    assert model.cancelled == 1
    assert plane.in_flight("gpu0") == 0


def test_a_deadline_given_by_the_protocol_wins_over_the_default() -> None:
    plane = _plane({"m": (Slow(0.2), "gpu0")}, deadline_policy=DeadlinePolicy(50))
    soon = Deadline.after_ms(5000, "the client's gRPC deadline")
    result = asyncio.run(plane.infer(ModelRef("m"), X, deadline=soon))
    np.testing.assert_array_equal(result.outputs["y"], X["x"])


def test_a_full_device_refuses_while_another_device_serves() -> None:
    plane = _plane({"slow": (Slow(10.0), "a"), "fast": (Slow(0.0), "b")}, max_in_flight=2)

    async def scenario() -> None:
        held = [asyncio.create_task(plane.infer(ModelRef("slow"), X)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted, match="device a is serving its limit of 2"):
            await plane.infer(ModelRef("slow"), X)
        for _ in range(5):
            await plane.infer(ModelRef("fast"), X)
        assert plane.in_flight("a") == 2
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert plane.in_flight() == 0

    asyncio.run(scenario())


def test_one_data_plane_bounds_requests_on_each_loop_it_serves_in_turn() -> None:
    """The data plane remembers its loop to find a request's task without a system call; a
    plane used from a new loop after the old one is gone (as tests and embedders do) still
    finds the right task: each loop's slow request is cut at its deadline, a quick one is not,
    and a request cancelled from outside stays cancelled (not turned into a deadline)."""
    model = Slow(10.0)
    plane = _plane({"m": (model, "gpu0")}, deadline_policy=DeadlinePolicy(100))

    async def cut() -> None:
        with pytest.raises(DeadlineExceeded):
            await plane.infer(ModelRef("m"), X)

    async def cancelled_from_outside() -> None:
        task = asyncio.create_task(plane.infer(ModelRef("m"), X))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for _ in range(2):  # each asyncio.run is a new loop
        asyncio.run(cut())
        asyncio.run(cancelled_from_outside())
    assert model.cancelled == 4
    model.seconds = 0.0
    result = asyncio.run(plane.infer(ModelRef("m"), X))
    assert result.outputs["y"].tolist() == [[1.0]]


def test_requests_in_flight_together_are_each_cut_at_their_own_deadline() -> None:
    """One loop timer serves every request's deadline: a sooner deadline that arrives later
    is still kept, a later one is not cut early, and a request that ends in time leaves no
    timer that cuts anything else."""
    slow = Slow(10.0)
    quick = Slow(0.01)
    plane = _plane({"slow": (slow, "a"), "quick": (quick, "b")})

    def ms(budget: float) -> Deadline:
        return Deadline.after_ms(budget, "the client's gRPC deadline")

    async def timed(name: str, deadline: Deadline) -> tuple[str, float]:
        started = time.monotonic()
        try:
            await plane.infer(ModelRef(name), X, deadline=deadline)
        except DeadlineExceeded:
            return "exceeded", time.monotonic() - started
        return "answered", time.monotonic() - started

    async def scenario() -> list[tuple[str, float]]:
        late = asyncio.create_task(timed("slow", ms(400)))
        await asyncio.sleep(0.02)
        soon = asyncio.create_task(timed("slow", ms(100)))  # sooner than the one armed
        done_in_time = asyncio.create_task(timed("quick", ms(50)))
        return [await soon, await done_in_time, await late]

    (soon, soon_s), (quick_result, _), (late, late_s) = asyncio.run(scenario())
    assert (soon, quick_result, late) == ("exceeded", "answered", "exceeded")
    assert 0.09 <= soon_s < 0.3
    assert 0.39 <= late_s < 0.8
    assert slow.cancelled == 2
    assert plane.in_flight() == 0
