"""A hot path's counting-only success is noted on its own ``RequestClock`` by the data plane
(no call, no tuple per request: ``StatsBook.note``'s lines inlined) and added up by the fold.
What a reader sees is what it saw before: every request right after a burst, its rows, its
lane, and the last request's end as the last inference, not the time of the fold."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from modelyard.deadlines import RequestClock
from modelyard.metrics.stats import FOLD_EVERY
from modelyard.observability.calls import KSERVE_GRPC_INDEX, TFSERVING_REST_INDEX
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.testing.dataplane import DOUBLE_KEY, doubling_dataplane


def _burst(dataplane: DataPlane, sizes: list[int], lane: int) -> None:
    async def burst() -> None:
        for rows in sizes:
            await dataplane.infer(ModelRef("double"), {"x": np.ones(rows, np.float32)}, lane=lane)

    asyncio.run(burst())


def test_a_read_right_after_a_burst_sees_every_request_its_rows_and_its_lane() -> None:
    dataplane, metrics = doubling_dataplane()
    sent = 2 * FOLD_EVERY + 7  # not a multiple: the last 7 are still on their clocks
    sizes = [1] * sent
    sizes[5] = sizes[FOLD_EVERY + 3] = 4  # requests of 4 rows among the plain ones
    _burst(dataplane, sizes, KSERVE_GRPC_INDEX)
    _burst(dataplane, [1, 1, 1], TFSERVING_REST_INDEX)
    # Not all folded yet: each lane's list folds on its own every FOLD_EVERY.
    assert len(metrics.pending[KSERVE_GRPC_INDEX]) == sent % FOLD_EVERY
    assert len(metrics.pending[TFSERVING_REST_INDEX]) == 3
    stats = metrics.book.get(DOUBLE_KEY)
    assert stats is not None
    assert not any(metrics.pending)  # the read folded them
    assert stats.outcomes == {("kserve_grpc", "OK"): sent, ("tfserving_rest", "OK"): 3}
    assert stats.success_count == stats.request_duration.count == sent + 3
    assert stats.inference_count == sent + 3 + 2 * 3
    assert stats.batches[1][0] == sent + 3 - 2
    assert stats.batches[4][0] == 2


def test_the_last_inference_is_the_last_requests_end_not_the_folds_time() -> None:
    dataplane, metrics = doubling_dataplane()
    _burst(dataplane, [1, 1, 1], KSERVE_GRPC_INDEX)
    last = metrics.pending[KSERVE_GRPC_INDEX][-1]
    assert isinstance(last, RequestClock)
    ended = last.end
    before_read = time.monotonic()
    time.sleep(0.05)  # the read (and its fold) comes well after the request ended
    stats = metrics.book.get(DOUBLE_KEY)
    assert stats is not None
    assert stats.last_inference == ended <= before_read
    # In the statistics' own unit (ms since the epoch): 50 ms before the read, not at it.
    now_ms = time.time() * 1000
    assert now_ms - stats.last_inference_ms >= 40
