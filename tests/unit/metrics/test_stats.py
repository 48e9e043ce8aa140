"""Per-version statistics: what one request adds, batches counted once, refusals without a
clock, and histograms as Prometheus reads them."""

from __future__ import annotations

import time

import pytest

from modelyard.deadlines import BatchRun, Phase, RequestClock
from modelyard.errors import Code
from modelyard.ids import VersionKey
from modelyard.metrics.stats import Histogram, StatsBook

KEY = VersionKey("m", 1)


def _clock(queued_s: float, device_s: float, batch: BatchRun | None = None) -> RequestClock:
    """A request that was admitted, queued ``queued_s`` and on the device ``device_s`` (up to
    now)."""
    now = time.monotonic()
    clock = RequestClock(None, model="m", start=now - queued_s - device_s - 0.001)
    if queued_s:
        clock.enter(Phase.BATCH_QUEUE, now - queued_s - device_s)
    clock.enter(Phase.DEVICE, now - device_s)
    clock.batch = batch
    return clock


def test_a_request_adds_its_durations_rows_and_one_execution() -> None:
    book = StatsBook()
    book.observe(KEY, _clock(0.0, 0.002), rows=3, protocol="kserve_rest", code=None)
    stats = book.of(KEY)
    assert (stats.success_count, stats.inference_count, stats.execution_count) == (1, 3, 1)
    assert stats.queue_ns == 0
    assert 0.002e9 <= stats.infer_ns < 0.5e9
    assert stats.success_ns >= stats.infer_ns + 0.001e9
    assert stats.batches == {3: [1, stats.infer_ns, 0, 0]}  # no worker said its times
    assert stats.outcomes == {("kserve_rest", "OK"): 1}
    assert stats.last_inference_ms > 0


def test_a_batch_is_one_execution_whatever_number_of_requests_it_served() -> None:
    book = StatsBook()
    run = BatchRun(rows=4)
    for _ in range(4):
        book.observe(KEY, _clock(0.003, 0.001, run), rows=1, protocol="kserve_grpc", code=None)
    stats = book.of(KEY)
    assert (stats.success_count, stats.inference_count, stats.execution_count) == (4, 4, 1)
    assert list(stats.batches) == [4]
    assert stats.batches[4][0] == 1
    assert stats.queue_ns >= 4 * 0.003e9
    assert stats.batch_size.count == 1


def test_the_workers_times_are_the_compute_split_and_each_request_of_a_batch_gets_them() -> None:
    book = StatsBook()
    alone = _clock(0.0, 0.004)
    alone.note_compute([10_000, 2_000_000, 30_000])
    book.observe(KEY, alone, rows=1, protocol="kserve_rest", code=None)
    run = BatchRun(rows=2)
    for _ in range(2):
        clock = _clock(0.001, 0.004, run)
        clock.note_compute([20_000, 3_000_000, 40_000])  # on the run: one execution's times
        book.observe(KEY, clock, rows=1, protocol="kserve_rest", code=None)
    stats = book.of(KEY)
    # Per request (Triton's inference_stats): the batch's two requests each get its times.
    assert stats.infer_ns == 2_000_000 + 2 * 3_000_000
    assert (stats.input_ns, stats.output_ns) == (10_000 + 2 * 20_000, 30_000 + 2 * 40_000)
    # Per execution (batch_stats): the batch once, with its own times.
    assert stats.batches == {1: [1, 2_000_000, 10_000, 30_000], 2: [1, 3_000_000, 20_000, 40_000]}
    # The rest of the 4 ms on the device (transport) is in the request's duration only.
    assert stats.success_ns >= 3 * 0.004e9


def test_failures_count_by_reason_and_refusals_by_protocol() -> None:
    book = StatsBook()
    book.observe(KEY, _clock(0.0, 0.001), rows=1, protocol="tfserving_rest",
                 code=Code.INVALID_ARGUMENT)  # fmt: skip
    book.observe(KEY, None, rows=0, protocol="kserve_rest", code=Code.INVALID_ARGUMENT)
    book.reject("kserve_grpc", Code.NOT_FOUND)
    stats = book.of(KEY)
    assert (stats.success_count, stats.fail_count) == (0, 2)
    assert stats.failures == {Code.INVALID_ARGUMENT: 2}
    assert stats.execution_count == 0
    assert book.rejected == {("kserve_grpc", Code.NOT_FOUND): 1}


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == pytest.approx(3.65)
