"""Folding a run of successes: each duration lands in the bucket Prometheus' ``le`` says (a
value equal to a bound is in that bound's bucket), whether it is a duration in seconds or the
worker's nanoseconds, and a read right after a burst sees every request."""

from __future__ import annotations

import random

from modelyard.deadlines import Phase, RequestClock
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


def _noted(clock: RequestClock, lane: int, rows: int, end: float) -> RequestClock:
    """``clock`` as ``StatsBook.note`` leaves it: the note of a success on ``KEY``."""
    clock.key, clock.lane, clock.rows, clock.end = KEY, lane, rows, end
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
        _noted(_plain(end - total, end - total / 2, (7, infer, 9)), 2, 1, end)
        for total, infer in zip(totals, infers_ns, strict=True)
    ]
    stats = VersionStats()
    fold_run(stats, run)
    assert stats.infer_counts == _expected([n / 1e9 for n in infers_ns])
    assert stats.request_counts == _expected([end - (end - t) for t in totals])
    assert stats.infer_ns == sum(infers_ns)
    assert (stats.input_ns, stats.output_ns) == (7 * len(run), 9 * len(run))
    assert stats.ok[2] == stats.inference_count == len(run)
    assert stats.batches == {1: [len(run), sum(infers_ns), 7 * len(run), 9 * len(run)]}


def test_without_worker_times_the_time_on_the_device_is_bucketed() -> None:
    end = 50.0
    devices = [0.0001, 0.00025, 0.0004, 0.003, 0.003, 11.0]
    run = [_noted(_plain(end - 2 * d, end - d, None), 0, 1, end) for d in devices]
    stats = VersionStats()
    fold_run(stats, run)
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
