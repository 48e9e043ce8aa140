"""Per-version statistics: what one request adds, batches counted once, refusals without a
clock, and histograms as Prometheus reads them."""

from __future__ import annotations

import copy
import time

import pytest

from modelyard.deadlines import BatchRun, Phase, RequestClock
from modelyard.errors import Code
from modelyard.ids import VersionKey
from modelyard.metrics import stats as stats_module
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


def _mixed_notes() -> list[tuple[VersionKey, RequestClock, int, int]]:
    """40 requests of two versions, interleaved: of one row and of four, unbatched and in
    batches of three (a batch's requests are of one version), with and without the worker's
    times; as (key, clock, rows, lane)."""
    other = VersionKey("m", 2)
    runs = {KEY: BatchRun(rows=3), other: BatchRun(rows=3)}
    notes = []
    for index in range(40):
        key = KEY if index % 3 else other
        if index % 7 == 0:
            run = runs[key]
            if run.counted:  # a new batch once one of the run's requests was counted
                run = runs[key] = BatchRun(rows=3)
            run.compute_ns = (5_000, 4_000_000, 6_000)
            clock = _clock(0.002, 0.003, run)
        else:
            # Durations far from the buckets' bounds: the two books read the clock apart.
            clock = _clock(0.0, (0.003, 0.0065, 0.015)[index % 3])
            if index % 2:
                clock.note_compute((1_000 + index, 500_000 + index, 2_000 + index))
        notes.append((key, clock, 1 if index % 5 else 4, index % 4))
    return notes


def test_one_fold_of_mixed_requests_adds_up_as_folding_each_request_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests noted together and folded once (as ``FOLD_EVERY`` does) give what folding
    after each request gives."""
    alone, together = StatsBook(), StatsBook()
    notes = _mixed_notes()
    copies = copy.deepcopy(notes)  # the same clocks (a batch's requests still share its run)
    # Both books see the requests end at the same instant, so a duration cannot fall into
    # another histogram bucket in one book than in the other (on a loaded machine the time
    # between noting a request in each book can be milliseconds).
    end = time.monotonic()
    monkeypatch.setattr(stats_module, "_monotonic", lambda: end)
    for (key, clock, rows, lane), again in zip(notes, copies, strict=True):
        alone.ok(key, clock, rows, lane)
        alone.fold()
        together.ok(again[0], again[1], again[2], again[3])
    assert any(together._pending)  # not folded yet: the reads below fold
    slack = 0.002  # seconds per request: the books read the clock microseconds apart
    executions = 0
    for key in (KEY, VersionKey("m", 2)):
        a, b = alone.of(key), together.of(key)
        count = a.success_count
        assert a.ok == b.ok
        assert (a.inference_count, a.execution_count) == (b.inference_count, b.execution_count)
        assert (a.request_counts, a.queue_counts, a.infer_counts) == (
            b.request_counts,
            b.queue_counts,
            b.infer_counts,
        )
        assert (a.input_ns, a.output_ns) == (b.input_ns, b.output_ns)
        # Every success is in each histogram once (its queue time is 0 s without a batcher).
        assert sum(b.request_counts) == sum(b.queue_counts) == sum(b.infer_counts) == count
        for field in ("request_s", "queue_s", "infer_s"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=count * slack)
        assert a.batches.keys() == b.batches.keys()
        for size, (n, infer_ns, input_ns, output_ns) in a.batches.items():
            assert [n, input_ns, output_ns] == [b.batches[size][i] for i in (0, 2, 3)]
            assert infer_ns == pytest.approx(b.batches[size][1], abs=n * slack * 1e9)
        assert b.last_inference >= a.last_inference > 0
        executions += b.execution_count
    assert executions > 20
