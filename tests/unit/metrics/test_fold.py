"""Folding a run of successes: each duration lands in the bucket Prometheus' ``le`` says (a
value equal to a bound is in that bound's bucket), whether it is a duration in seconds or the
worker's nanoseconds, and a read right after a burst sees every request."""

from __future__ import annotations

import math
import random

import pytest

from modelyard.deadlines import BatchRun, Phase, RequestClock
from modelyard.ids import VersionKey
from modelyard.metrics import stats as stats_module
from modelyard.metrics.fold import LATENCY_BUCKETS_NS, LATENCY_BUCKETS_S, fold_run
from modelyard.metrics.stats import FOLD_EVERY, StatsBook, VersionStats

KEY = VersionKey("m", 1)


def _expected(values_s: list[float]) -> list[int]:
    """Counts per bucket by the definition: the first bucket whose bound the value does not
    exceed, +Inf last (a linear scan, not the code under test)."""
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for value in values_s:
        bucket = next(
            (i for i, b in enumerate(LATENCY_BUCKETS_S) if value <= b), len(LATENCY_BUCKETS_S)
        )
        counts[bucket] += 1
    return counts


def _plain(start: float, device_at: float, compute: tuple[int, int, int] | None) -> RequestClock:
    clock = RequestClock(None, model="m", start=start)
    clock.enter(Phase.DEVICE, device_at)
    if compute is not None:
        clock.note_compute(compute)
    return clock


def _noted(clock: RequestClock, rows: int, end: float) -> RequestClock:
    """``clock`` as ``StatsBook.note`` leaves it: the note of a success on ``KEY`` (the lane
    is the list it is noted in: ``fold_run``'s argument)."""
    clock.key, clock.rows, clock.end = KEY, rows, end
    return clock


def test_durations_and_worker_times_land_in_their_le_bucket_bounds_included() -> None:
    rng = random.Random(16)
    bounds_ns = list(LATENCY_BUCKETS_NS)
    # The worker's compute_infer: exactly on every bound, a nanosecond either side, and spread.
    infers_ns = [n + d for n in bounds_ns for d in (-1, 0, 1)]
    infers_ns += [rng.randrange(1, 12 * 10**9) for _ in range(100)]
    rng.shuffle(infers_ns)
    end = 1000.0
    totals = [rng.choice((0.00004, 0.0003, 0.0007, 0.004, 0.02, 0.3, 3.0, 20.0)) for _ in infers_ns]
    run = [
        _noted(_plain(end - total, end - total / 2, (7, infer, 9)), 1, end)
        for total, infer in zip(totals, infers_ns, strict=True)
    ]
    stats = VersionStats()
    fold_run(stats, run, 2)
    assert stats.infer_counts == _expected([n / 1e9 for n in infers_ns])
    assert stats.request_counts == _expected([end - (end - t) for t in totals])
    assert stats.infer_ns == sum(infers_ns)
    assert (stats.input_ns, stats.output_ns) == (7 * len(run), 9 * len(run))
    assert stats.ok[2] == stats.inference_count == len(run)
    assert stats.batches == {1: [len(run), sum(infers_ns), 7 * len(run), 9 * len(run)]}


def test_without_worker_times_the_time_on_the_device_is_bucketed() -> None:
    end = 50.0
    devices = [0.0001, 0.00025, 0.0004, 0.003, 0.003, 11.0]
    run = [_noted(_plain(end - 2 * d, end - d, None), 1, end) for d in devices]
    stats = VersionStats()
    fold_run(stats, run, 0)
    assert stats.ok[0] == len(devices)
    assert stats.infer_counts == _expected([end - (end - d) for d in devices])
    assert stats.infer_s == sum(end - (end - d) for d in devices)


def test_a_read_right_after_a_burst_sees_every_request() -> None:
    book = StatsBook()
    sent = 2 * FOLD_EVERY + 7  # not a multiple: the last 7 wait for a fold
    now = stats_module._monotonic()
    for index in range(sent):
        book.ok(KEY, _plain(now - 0.002, now - 0.001, (1, 1000 + index, 1)), 1, 3)
    stats = book.get(KEY)
    assert stats is not None
    assert stats.success_count == stats.request_duration.count == sent
    assert stats.infer_duration.count == stats.execution_count == sent
    assert stats.infer_ns == sum(1000 + i for i in range(sent))


def _mixed_large(
    rng: random.Random, count: int, end: float
) -> tuple[list[RequestClock], list[int]]:
    """``count`` unbatched successes on ``KEY`` ending by ``end``, noted: spread durations, 0,
    1, 3 or 8 rows (mostly 1), the worker's times told for about two in three; and the lane of
    each (four lanes)."""
    run = []
    lanes = []
    for index in range(count):
        total = rng.choice((0.00004, 0.0002, 0.0004, 0.0009, 0.002, 0.004, 0.03, 0.2, 0.7, 3.0))
        total *= rng.uniform(0.9, 1.1)
        ended = end - (count - index) * 1e-6  # in arrival order
        compute = None
        if rng.random() < 0.67:
            compute = (rng.randrange(1, 9_000), rng.randrange(1, 2 * 10**9), 40 + index)
        clock = _plain(ended - total, ended - total * rng.uniform(0.1, 0.9), compute)
        run.append(_noted(clock, rng.choice((1, 1, 1, 1, 1, 0, 3, 8)), ended))
        lanes.append(rng.randrange(4))
    return run, lanes


def test_a_large_fold_counts_exactly_what_a_loop_over_its_requests_counts() -> None:
    run, lanes = _mixed_large(random.Random(1216), 20 * FOLD_EVERY + 3, 2000.0)
    stats = VersionStats()
    for lane in range(4):  # each lane's list in turn, as the book folds them
        fold_run(stats, [c for c, at in zip(run, lanes, strict=True) if at == lane], lane)
    # The reference, by the definitions, one request at a time.
    told = [c for c in run if c.compute_ns]
    totals = [c.end - c.start for c in run]
    infers_s = [c.compute_ns[1] / 1e9 if c.compute_ns else c.end - c.marks[1][1] for c in run]
    assert stats.request_counts == _expected(totals)
    assert stats.infer_counts == _expected(infers_s)
    assert stats.queue_counts == [len(run)] + [0] * len(LATENCY_BUCKETS_S)
    assert stats.ok == [lanes.count(lane) for lane in range(len(stats.ok))]
    assert stats.inference_count == sum(c.rows for c in run)
    assert stats.input_ns == sum(c.compute_ns[0] for c in told)
    assert stats.output_ns == sum(c.compute_ns[2] for c in told)
    assert abs(stats.request_s - math.fsum(totals)) < 1e-9
    assert abs(stats.infer_s - math.fsum(infers_s)) < 1e-9
    assert stats.last_inference == run[-1].end
    assert sorted(stats.batches) == [1, 3, 8]
    for size in (1, 3, 8):
        of_size = [c for c in run if max(c.rows, 1) == size]
        count, infer_ns, input_ns, output_ns = stats.batches[size]
        assert count == len(of_size)
        assert input_ns == sum(c.compute_ns[0] for c in of_size if c.compute_ns)
        assert output_ns == sum(c.compute_ns[2] for c in of_size if c.compute_ns)
        expected_s = math.fsum(infers_s[i] for i, c in enumerate(run) if max(c.rows, 1) == size)
        assert abs(infer_ns - expected_s * 1e9) <= 1
    assert 0 < len(told) < len(run)


def test_one_fold_of_versions_batches_and_plain_requests_counts_each_where_it_belongs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two versions interleaved, a batch's requests and a request that never reached the
    device, among plain ones, in one fold through the book."""
    book = StatsBook()
    other = VersionKey("m", 2)
    now = stats_module._monotonic()
    monkeypatch.setattr(stats_module, "_monotonic", lambda: now)  # every request ends now
    run = BatchRun(rows=3)
    run.compute_ns = (10, 2_000_000, 30)  # 2 ms in the model: the batch's
    sent = FOLD_EVERY - 1  # one fold, at the read
    for index in range(sent):
        if index % 10 == 7:  # a batch's request: queued 1.2 ms, then on the device
            clock = RequestClock(None, model="m", start=now - 0.004)
            clock.enter(Phase.DEVICE, now - 0.0039)
            clock.enter(Phase.BATCH_QUEUE, now - 0.0038)
            clock.enter(Phase.DEVICE, now - 0.0026)
            clock.batch = run
            book.ok(KEY, clock, 1, 0)
        elif index == 11:  # never on the device
            book.ok(KEY, RequestClock(None, model="m", start=now - 0.0003), 1, 0)
        else:  # 0.4 ms on the device
            book.ok(KEY if index % 2 else other, _plain(now - 0.0007, now - 0.0004, None), 1, 1)
    stats, stats_2 = book.get(KEY), book.get(other)
    assert stats is not None
    assert stats_2 is not None
    batched = sum(1 for i in range(sent) if i % 10 == 7)
    plain = sum(1 for i in range(sent) if i % 10 != 7 and i != 11 and i % 2)
    assert (stats.ok[0], stats.ok[1], sum(stats.ok)) == (batched + 1, plain, batched + 1 + plain)
    assert stats_2.success_count == stats_2.ok[1] == sent - batched - 1 - plain
    assert stats.execution_count == 1 + 1 + plain  # the batch once, each unbatched once
    assert stats.batches[3][0] == 1
    assert stats.queue_counts[_bucket(0.0012)] == batched
    assert stats.queue_counts[0] == plain + 1
    assert stats.infer_counts[_bucket(0.002)] == batched  # the worker's 2 ms
    assert stats.infer_counts[_bucket(0.0004)] == plain
    assert stats.infer_counts[0] == 1  # never on the device
    assert stats_2.infer_counts[_bucket(0.0004)] == stats_2.success_count
    assert stats_2.request_counts[_bucket(0.0007)] == stats_2.success_count
    assert stats.last_inference == stats_2.last_inference == now


def _bucket(value_s: float) -> int:
    return _expected([value_s]).index(1)


def test_a_read_in_the_middle_of_a_burst_sees_every_request_so_far() -> None:
    book = StatsBook()
    now = stats_module._monotonic()
    first = 3 * FOLD_EVERY + 10  # three folds, then 10 noted and not folded
    for index in range(first):
        book.ok(KEY, _plain(now - 0.002, now - 0.001, (1, 1000 + index, 1)), 1, 3)
    assert len(book.pending[3]) == 10
    stats = book.get(KEY)
    assert stats is not None
    assert not any(book.pending)
    assert stats.success_count == stats.infer_duration.count == first
    assert stats.infer_ns == sum(1000 + i for i in range(first))
    for _ in range(FOLD_EVERY - 1):
        book.ok(KEY, _plain(now - 0.002, now - 0.001, (1, 5, 1)), 4, 2)
    stats = book.get(KEY)
    assert stats is not None
    assert (stats.ok[3], stats.ok[2]) == (first, FOLD_EVERY - 1)
    assert stats.inference_count == first + 4 * (FOLD_EVERY - 1)
    assert stats.batches == {
        1: [first, sum(1000 + i for i in range(first)), first, first],
        4: [FOLD_EVERY - 1, 5 * (FOLD_EVERY - 1), FOLD_EVERY - 1, FOLD_EVERY - 1],
    }
