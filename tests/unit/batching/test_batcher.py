"""The dynamic batcher over a recording fake servable: batching, bounds, errors, cancellation.

The fake sits at the batcher's seam (a ``Servable``); the batcher itself is the real one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.batching import DynamicBatcher, batching_wrapper
from modelyard.config.schema import BatchingConfig, ModelConfig
from modelyard.errors import Internal, InvalidArgument, ResourceExhausted, Unavailable
from modelyard.tensors import DataType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, -1)),),
    outputs=(
        TensorSpec("double", DataType.FP32, (-1, -1)),
        TensorSpec("total", DataType.FP32, (-1,)),
    ),
)


class Recorder:
    """``double = 2x``, ``total = row sums``; records the rows of each batch it runs.

    ``gate``, when given, holds every batch until it is set; ``fail_next`` makes the next batch
    raise it; ``running`` counts batches inside ``infer`` right now (and ``most_running`` the peak).
    """

    signature = SIG
    signatures = {"serving_default": SIG}

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = gate
        self.fail_next: Exception | None = None
        self.running = 0
        self.most_running = 0
        self.closed = False

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            return {"double": x * 2, "total": x.sum(axis=1)}
        finally:
            self.running -= 1

    async def close(self) -> None:
        self.closed = True


def rows(n: int, width: int = 2, start: float = 0.0) -> dict[str, np.ndarray]:
    """``n`` distinct rows, so a test can tell whose rows came back."""
    return {
        "x": (np.arange(n * width, dtype=np.float32) + start).reshape(n, width),
    }


def bad_batch_error() -> InvalidArgument:
    return InvalidArgument("a guard on a dynamic dimension failed")


NEVER = 60_000_000  # a batch timeout (µs) no test waits for: only a full batch dispatches


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 10))


def batcher(fake: Recorder, **config: Any) -> DynamicBatcher:
    return DynamicBatcher(fake, BatchingConfig(**config), model="m")


async def settle() -> None:
    """Let every ready callback and task run (no timers)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_full_batch_runs_at_once_and_each_request_gets_exactly_its_rows() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=6, batch_timeout_micros=NEVER)
        sizes = [1, 2, 3]
        requests = [rows(n, start=100 * i) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(b.infer(r) for r in requests))
        assert [len(batch) for batch in fake.batches] == [6]
        for request, result in zip(requests, results, strict=True):
            assert np.array_equal(result["double"], request["x"] * 2)
            assert np.array_equal(result["total"], request["x"].sum(axis=1))

    run(test)


def test_a_request_that_does_not_fit_closes_the_open_batch() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=4, batch_timeout_micros=1000)
        results = await asyncio.gather(b.infer(rows(3)), b.infer(rows(2, start=50)))
        assert [len(batch) for batch in fake.batches] == [3, 2]
        assert np.array_equal(results[1]["double"], rows(2, start=50)["x"] * 2)

    run(test)


def test_a_lone_request_waits_for_the_timeout_then_runs() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=8, batch_timeout_micros=50_000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await b.infer(rows(1))
        assert loop.time() - started >= 0.05
        assert [len(batch) for batch in fake.batches] == [1]

    run(test)


def test_a_timed_out_batch_keeps_filling_while_the_model_is_busy() -> None:
    """The timeout makes a batch due, not closed: while the model computes, later requests
    join it (as in TF Serving), instead of leaving a scrap batch of the first arrivals."""

    async def test() -> None:
        gate = asyncio.Event()
        fake = Recorder(gate)
        b = batcher(fake, max_batch_size=4, batch_timeout_micros=5_000)
        busy = asyncio.create_task(b.infer(rows(4)))  # full: runs at once and holds the model
        await settle()
        early = asyncio.create_task(b.infer(rows(1, start=10)))
        await asyncio.sleep(0.03)  # six timeouts pass while the model is busy
        late = asyncio.create_task(b.infer(rows(2, start=20)))
        await settle()
        assert len(fake.batches) == 1
        gate.set()
        await asyncio.gather(busy, early, late)
        assert [len(batch) for batch in fake.batches] == [4, 3]
        assert np.array_equal(late.result()["double"], rows(2, start=20)["x"] * 2)

    run(test)


def test_a_due_batch_runs_as_soon_as_the_model_is_free() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=4, batch_timeout_micros=5_000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(b.infer(rows(1)), b.infer(rows(1, start=5)))
        assert loop.time() - started < 1.0
        assert [len(batch) for batch in fake.batches] == [2]

    run(test)


def test_the_next_batch_starts_before_the_last_one_is_answered() -> None:
    """The model is not left idle while the event loop answers the finished batch's requests."""

    async def test() -> None:
        gate = asyncio.Event()
        fake = Recorder(gate)
        b = batcher(fake, max_batch_size=2, batch_timeout_micros=NEVER)
        started_when_answered: list[int] = []

        async def client(start: float) -> None:
            await b.infer(rows(2, start=start))
            started_when_answered.append(len(fake.batches))

        first = asyncio.create_task(client(0))
        await settle()
        second = asyncio.create_task(client(100))
        await settle()
        assert len(fake.batches) == 1
        gate.set()
        await asyncio.gather(first, second)
        assert started_when_answered == [2, 2]

    run(test)


def test_requests_with_other_trailing_shapes_fill_their_own_batches() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=2, batch_timeout_micros=NEVER)
        results = await asyncio.gather(
            b.infer(rows(1, width=2)),
            b.infer(rows(1, width=3)),
            b.infer(rows(1, width=2, start=10)),
            b.infer(rows(1, width=3, start=10)),
        )
        assert sorted(batch.shape for batch in fake.batches) == [(2, 2), (2, 3)]
        assert results[1]["double"].shape == (1, 3)

    run(test)


def test_batches_are_padded_to_an_allowed_size_and_pads_never_returned() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=8, batch_timeout_micros=1000, allowed_batch_sizes=(4, 8))
        first, second = rows(1, start=7), rows(2, start=20)
        results = await asyncio.gather(b.infer(first), b.infer(second))
        (batch,) = fake.batches
        assert batch.shape == (4, 2)
        assert np.array_equal(batch[3], first["x"][0])  # the pad repeats the first row
        assert results[0]["double"].shape == (1, 2)
        assert np.array_equal(results[1]["double"], second["x"] * 2)

    run(test)


def test_a_request_over_max_batch_size_runs_alone_unpadded() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=4, batch_timeout_micros=NEVER, allowed_batch_sizes=(2, 4))
        result = await b.infer(rows(7))
        assert [len(batch) for batch in fake.batches] == [7]
        assert np.array_equal(result["double"], rows(7)["x"] * 2)

    run(test)


def test_a_full_queue_refuses_exactly_the_overflow() -> None:
    async def test() -> None:
        gate = asyncio.Event()
        fake = Recorder(gate)
        # One running batch of 2 (held at the gate) + a queue of 2 batches x 2 rows = 6 accepted.
        b = batcher(fake, max_batch_size=2, batch_timeout_micros=NEVER, max_enqueued_batches=2)
        tasks = [asyncio.create_task(b.infer(rows(1, start=i))) for i in range(10)]
        await settle()
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 4
        for task in refused:
            exc = task.exception()
            assert isinstance(exc, ResourceExhausted)
            assert "'m'" in exc.message
            assert "max_enqueued_batches" in exc.message
        gate.set()
        done = await asyncio.gather(*(t for t in tasks if t not in refused))
        assert len(done) == 6
        assert [len(batch) for batch in fake.batches] == [2, 2, 2]
        assert b.queued_rows == 0

    run(test)


class Picky(Recorder):
    """A ``Recorder`` whose model rejects any batch holding a negative value, as a gather rejects
    an index out of range: the error names the first bad value, as a backend's would."""

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        x = inputs["x"]
        if (x < 0).any():
            self.batches.append(x.copy())
            raise InvalidArgument(f"index {x[x < 0][0]:g} is out of range")
        return await super().infer(inputs)


def test_a_bad_request_fails_alone_and_the_good_ones_in_its_batch_succeed() -> None:
    async def test() -> None:
        fake = Picky()
        b = batcher(fake, max_batch_size=8, batch_timeout_micros=NEVER)
        sent = [rows(1, start=10 * i) for i in range(8)]
        sent[5] = {"x": np.array([[-7.0, 1.0]], dtype=np.float32)}
        results = await asyncio.gather(*(b.infer(s) for s in sent), return_exceptions=True)
        for i, (inputs, result) in enumerate(zip(sent, results, strict=True)):
            if i == 5:
                assert isinstance(result, InvalidArgument)
                assert str(result) == "index -7 is out of range"
            else:
                assert not isinstance(result, BaseException), result
                np.testing.assert_array_equal(result["double"], inputs["x"] * 2)
        # One failing batch of 8, then halves, depth first: [0..3] ok, [4..7] fails, [4,5]
        # fails, [4] ok, [5] fails, [6,7] ok: 7 calls, within the bound of 2N - 1 = 15.
        assert [len(x) for x in fake.batches] == [8, 4, 4, 2, 1, 1, 2]

    run(test)


def test_bisection_costs_at_most_2n_minus_1_calls_when_every_request_is_bad() -> None:
    async def test() -> None:
        fake = Picky()
        b = batcher(fake, max_batch_size=6, batch_timeout_micros=NEVER)
        sent = [{"x": np.full((1, 2), -1.0 - i, dtype=np.float32)} for i in range(6)]
        results = await asyncio.gather(*(b.infer(s) for s in sent), return_exceptions=True)
        assert [str(r) for r in results] == [f"index {-1 - i} is out of range" for i in range(6)]
        assert len(fake.batches) <= 2 * 6 - 1

    run(test)


def test_a_worker_death_fails_the_whole_batch_without_retrying() -> None:
    async def test() -> None:
        fake = Recorder()
        fake.fail_next = Unavailable("the worker of device cpu died")
        b = batcher(fake, max_batch_size=2, batch_timeout_micros=NEVER)
        results = await asyncio.gather(b.infer(rows(1)), b.infer(rows(1)), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        assert {str(r) for r in results} == {"the worker of device cpu died"}
        assert results[0] is not results[1]
        assert len(fake.batches) == 1  # no retry: the supervisor owns a dead worker
        ok = await asyncio.gather(b.infer(rows(1)), b.infer(rows(1)))
        assert len(ok) == 2

    run(test)


def test_an_unexpected_exception_becomes_internal_for_the_request_that_caused_it() -> None:
    async def test() -> None:
        fake = Recorder()
        fake.fail_next = RuntimeError("kaboom")  # the batch fails once; the halves run fine
        b = batcher(fake, max_batch_size=2, batch_timeout_micros=NEVER)
        results = await asyncio.gather(b.infer(rows(1)), b.infer(rows(1)), return_exceptions=True)
        assert not any(isinstance(r, BaseException) for r in results)
        fake.fail_next = RuntimeError("kaboom")
        b = batcher(fake, max_batch_size=1, batch_timeout_micros=NEVER)
        with pytest.raises(Internal, match="kaboom"):
            await b.infer(rows(1))

    run(test)


def test_outputs_without_a_row_per_input_row_fail_the_batch() -> None:
    class Summer(Recorder):
        async def infer(
            self, inputs: Any, signature_name: str | None = None
        ) -> dict[str, np.ndarray]:
            return {"double": inputs["x"][:1], "total": inputs["x"].sum(axis=1)}

    async def test() -> None:
        b = batcher(Summer(), max_batch_size=2, batch_timeout_micros=NEVER)
        results = await asyncio.gather(b.infer(rows(1)), b.infer(rows(1)), return_exceptions=True)
        assert all(isinstance(r, Internal) and "'double'" in str(r) for r in results)

    run(test)


def test_a_cancelled_request_leaves_the_queue() -> None:
    async def test() -> None:
        gate = asyncio.Event()
        fake = Recorder(gate)
        b = batcher(fake, max_batch_size=2, batch_timeout_micros=NEVER, max_enqueued_batches=1)
        running = [asyncio.create_task(b.infer(rows(1))) for _ in range(2)]
        queued = asyncio.create_task(b.infer(rows(1, start=100)))
        await settle()
        assert b.queued_rows == 1
        queued.cancel()
        await settle()
        assert b.queued_rows == 0
        # Its place is free again: two more rows fit, and form the next batch without it.
        later = [asyncio.create_task(b.infer(rows(1, start=200 + i))) for i in range(2)]
        await settle()
        gate.set()
        await asyncio.gather(*running, *later)
        assert [batch[:, 0].tolist() for batch in fake.batches] == [[0, 0], [200, 201]]

    run(test)


def test_num_batch_threads_bounds_the_batches_running_at_once() -> None:
    async def test() -> None:
        gate = asyncio.Event()
        fake = Recorder(gate)
        b = batcher(fake, max_batch_size=1, batch_timeout_micros=NEVER, num_batch_threads=2)
        tasks = [asyncio.create_task(b.infer(rows(1))) for _ in range(5)]
        await settle()
        assert fake.running == 2
        gate.set()
        await asyncio.gather(*tasks)
        assert fake.most_running == 2
        assert len(fake.batches) == 5

    run(test)


def test_close_fails_the_queued_requests_and_closes_the_model() -> None:
    async def test() -> None:
        fake = Recorder()
        b = batcher(fake, max_batch_size=4, batch_timeout_micros=NEVER)
        queued = asyncio.create_task(b.infer(rows(1)))
        await settle()
        await b.close()
        with pytest.raises(Unavailable):
            await queued
        with pytest.raises(Unavailable):
            await b.infer(rows(1))
        assert fake.closed
        assert fake.batches == []

    run(test)


def _model(**batching: Any) -> ModelConfig:
    return ModelConfig(
        name="m",
        base_path=Path("/nowhere"),
        batching=BatchingConfig(**batching) if batching else None,
    )


def test_the_wrapper_batches_only_models_that_ask_for_it() -> None:
    async def test() -> None:
        fake = Recorder()
        assert batching_wrapper(fake, _model()) is fake
        assert isinstance(batching_wrapper(fake, _model(max_batch_size=4)), DynamicBatcher)

    run(test)


def test_the_wrapper_refuses_a_model_without_a_batch_dimension_and_closes_it() -> None:
    class Fixed(Recorder):
        signature = Signature(
            inputs=(TensorSpec("x", DataType.FP32, (2, 3)),),
            outputs=(TensorSpec("y", DataType.FP32, (2, 3)),),
        )

    async def test() -> None:
        fake = Fixed()
        with pytest.raises(InvalidArgument, match="no variable first"):
            batching_wrapper(fake, _model(max_batch_size=4))
        await settle()
        assert fake.closed

    run(test)


def test_named_signatures_pass_through_unbatched() -> None:
    class Named(Recorder):
        signatures = {"serving_default": SIG, "other": SIG}

        def __init__(self) -> None:
            super().__init__()
            self.named: list[str] = []

        async def infer(
            self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
        ) -> dict[str, np.ndarray]:
            if signature_name is None:
                return await super().infer(inputs)
            self.named.append(signature_name)
            return {"double": inputs["x"], "total": inputs["x"].sum(axis=1)}

    async def test() -> None:
        fake = Named()
        named = batcher(fake, max_batch_size=4, batch_timeout_micros=NEVER)
        assert set(named.signatures) == {"serving_default", "other"}
        # A batch of one row would wait for NEVER; a named signature runs at once, alone.
        result = await named.infer(rows(1), "other")
        assert np.array_equal(result["double"], rows(1)["x"])
        assert fake.named == ["other"]
        assert fake.batches == []
        plain = batcher(Recorder(), max_batch_size=4, batch_timeout_micros=NEVER)
        assert set(plain.signatures) == {"serving_default"}

    run(test)
