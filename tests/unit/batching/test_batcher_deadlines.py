"""The batcher and deadlines: expired work leaves the queue unrun; a batch carries the latest
deadline of its requests to the model. Over a fake servable at the batcher's seam."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from modelyard import deadlines
from modelyard.batching import DynamicBatcher
from modelyard.config.schema import BatchingConfig
from modelyard.deadlines import Deadline, RequestClock
from modelyard.errors import DeadlineExceeded
from modelyard.tensors import DataType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, 1)),),
    outputs=(TensorSpec("y", DataType.FP32, (-1, 1)),),
)


class Held:
    """Identity; the first batch waits for ``gate``. Records each batch's rows and the time
    left to the deadline it was sent with (None: none)."""

    signature = SIG
    signatures = {"serving_default": SIG}

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.batches: list[list[float]] = []
        self.budgets: list[float | None] = []

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        self.batches.append(inputs["x"][:, 0].tolist())
        self.budgets.append(deadlines.remaining_ms())
        if len(self.batches) == 1:
            await self.gate.wait()
        return {"y": inputs["x"]}

    async def close(self) -> None:
        pass


def _row(value: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[value]], dtype=np.float32)}


async def _infer(batcher: DynamicBatcher, value: float, within_s: float | None) -> object:
    deadline = None if within_s is None else Deadline.after_ms(within_s * 1000, "test")
    with deadlines.serving(RequestClock(deadline, model="m")):
        return await batcher.infer(_row(value))


def _batcher(model: Held, timeout_micros: int = 1000) -> DynamicBatcher:
    config = BatchingConfig(
        max_batch_size=8, batch_timeout_micros=timeout_micros, num_batch_threads=1
    )
    return DynamicBatcher(model, config, model="m")


def test_a_request_whose_deadline_passes_in_the_queue_is_answered_and_not_run() -> None:
    async def scenario() -> None:
        model = Held()
        batcher = _batcher(model)
        first = asyncio.create_task(_infer(batcher, 1.0, None))
        await asyncio.sleep(0.02)  # the first batch runs, held at the gate
        late = asyncio.create_task(_infer(batcher, 2.0, 0.05))
        patient = asyncio.create_task(_infer(batcher, 3.0, None))
        await asyncio.sleep(0.15)  # both wait in the queue; the late one's deadline passes
        model.gate.set()
        await first
        await patient
        with pytest.raises(DeadlineExceeded, match="queued in the batcher of model 'm'"):
            await late
        assert model.batches == [[1.0], [3.0]]  # the expired row never reached the model

    asyncio.run(scenario())


def test_a_batch_is_sent_with_the_latest_deadline_of_its_requests() -> None:
    async def scenario() -> None:
        model = Held()
        model.gate.set()
        batcher = _batcher(model, timeout_micros=20_000)
        await asyncio.gather(_infer(batcher, 1.0, 1.0), _infer(batcher, 2.0, 3.0))
        await asyncio.gather(_infer(batcher, 1.0, 1.0), _infer(batcher, 2.0, None))
        assert [sorted(b) for b in model.batches] == [[1.0, 2.0], [1.0, 2.0]]
        budget = model.budgets[0]
        assert budget is not None
        assert 2000 < budget <= 3000  # the 3 s request's, not the 1 s one's
        assert model.budgets[1] is None  # one request without a deadline: none

    asyncio.run(scenario())
