"""Adding up the successes ``StatsBook.ok`` noted (``StatsBook.fold``): the arithmetic of
statistics, run every ``FOLD_EVERY`` requests and whenever anything reads, in one tight loop
over a version's notes rather than on each request's path.

Async safety: called by ``StatsBook`` on the server's event loop only.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from modelyard.deadlines import Phase, RequestClock
from modelyard.ids import VersionKey

if TYPE_CHECKING:
    from modelyard.metrics.stats import VersionStats

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
"""Request, queue and compute latencies: tens of microseconds (tiny models on CPU) to seconds."""


LATENCY_BUCKETS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)
"""``LATENCY_BUCKETS_S`` in integer nanoseconds: the worker's times are bucketed as integers.
A count of nanoseconds ``n`` is at most a bound ``b_ns`` exactly when ``n / 1e9`` is at most
the bound in seconds (both bounds and quotients are correctly rounded, and no bound is within
a nanosecond of another value), so both sides bucket alike."""

_bisect = bisect.bisect_left
_bisect_right = bisect.bisect_right


def fold_run(
    stats: VersionStats, run: list[RequestClock], lane: int, key: VersionKey | None = None
) -> list[RequestClock] | None:
    """Add the successes of version ``key`` among ``run`` (``StatsBook.ok``'s notes in lane
    ``lane``'s list, arrival order; None: all of them, of one version) to ``stats``, counted
    on ``lane``, and return the others (None: there are none), in order, for the book to fold
    next. Of ``key``'s, the plain ones (unbatched, one row, admitted then straight to the
    device: no ``_phases`` list) in the loop here, which only collects their durations and
    the worker's times (a list append and an extend each), counted into the histograms and
    summed once per run (``_add_sorted``, ``sum``, slices); the others, if any, by
    ``_fold_each``. Measured with callgrind: about 40 % fewer instructions a request than a
    loop that buckets each duration as it goes (a ``bisect`` of Python floats is several
    comparisons, each a call)."""
    ok = stats.ok
    totals: list[float] = []
    computes: list[int] = []  # the worker's input, infer, output ns, three a request, in a row
    others = rest = None
    if key is None:
        key = run[0].key
    extend = computes.extend  # a bound method: ``+=`` takes two generic calls more a request
    for clock in run:
        if clock.key is not key:  # another version's (rare: one version's come together)
            if rest is None:
                rest = [clock]
            else:
                rest.append(clock)
        elif clock._phases is None and clock.rows == 1:  # no list: no batch, no queue
            extend(clock.compute_ns)
            totals.append(clock.end - clock.start)
        elif others is None:
            others = [clock]
        else:
            others.append(clock)
    plain = len(totals)
    if plain:
        ok[lane] += plain
        stats.queue_counts[0] += plain  # queued 0 s: the first bucket
        stats.request_s += sum(totals, 0.0)  # in arrival order, as a loop adding them would
        _add_sorted(stats.request_counts, LATENCY_BUCKETS_S, totals)
        infer_s = 0.0
        input_total = output_total = 0
        device_s: list[float] = []  # the time on the device, where the worker did not say
        if len(computes) != 3 * plain:  # some without the worker's times: their time on the
            computes, device_s = _split_told(run, key)  # device instead
        if computes:  # columns by slices, in C (no tuple or iterator a request)
            input_total = sum(computes[0::3])
            output_total = sum(computes[2::3])
            worker_ns = computes[1::3]
            infer_s = sum(worker_ns) / 1e9
            _add_sorted(stats.infer_counts, LATENCY_BUCKETS_NS, worker_ns)
        if device_s:
            infer_s += sum(device_s, 0.0)
            _add_sorted(stats.infer_counts, LATENCY_BUCKETS_S, device_s)
        stats.infer_s += infer_s
        stats.input_ns += input_total
        stats.output_ns += output_total
        stats.inference_count += plain  # one row each
        # One execution of size 1 each.
        _add_executions(stats.executions, 1, plain, infer_s, input_total, output_total)
    if others is not None:
        _fold_each(stats, others, lane)
    last = run[-1].end if rest is None else next(c.end for c in reversed(run) if c.key is key)
    if last > stats.last_inference:  # another lane's list may have been folded after this
        stats.last_inference = last
    return rest


def _split_told(run: list[RequestClock], key: VersionKey) -> tuple[list[int], list[float]]:
    """Of ``key``'s plain requests in ``run`` (``fold_run``'s), the worker's times of those it
    said them for (input, infer, output ns, three a request in a row), and the time on the
    device of the others (0 for one never on the device), each in arrival order."""
    told: list[int] = []
    device_s: list[float] = []
    for clock in run:
        if clock.key is key and clock._phases is None and clock.rows == 1:
            if clock.compute_ns:
                told += clock.compute_ns
            else:
                device_at = clock.device_at
                device_s.append(clock.end - device_at if device_at is not None else 0.0)
    return told, device_s


def _add_sorted(
    counts: list[int], bounds: tuple[float, ...] | tuple[int, ...], values: list[float] | list[int]
) -> None:
    """Add ``values`` to the histogram ``counts`` on ``bounds`` (a value is in the first bucket
    whose bound it does not exceed, as ``bisect_left`` finds it; the last is above every
    bound). Sorts ``values`` (in C, a few comparisons a value) and looks up only the bounds
    between the smallest and the largest: a run's durations usually fall in one or two
    buckets, so this is a few bisects a run rather than one a value."""
    values.sort()
    low = _bisect(bounds, values[0])
    high = _bisect(bounds, values[-1])
    if low == high:
        counts[low] += len(values)
        return
    start = 0
    for bucket in range(low, high):
        end = _bisect_right(values, bounds[bucket], start)  # the values <= this bound
        counts[bucket] += end - start
        start = end
    counts[high] += len(values) - start


def _fold_each(stats: VersionStats, run: list[RequestClock], index: int) -> None:
    """Add successes of one version (``StatsBook.ok``'s notes) on lane ``index`` to ``stats``.
    Sums are kept in local variables and written once (a float or int held only by a local is
    updated in place; one held by an attribute is replaced by a new object on every addition),
    and unbatched requests of one row, the common case, add to their execution row once per
    run."""
    bounds = LATENCY_BUCKETS_S
    ok = stats.ok
    request_counts = stats.request_counts
    queue_counts = stats.queue_counts
    infer_counts = stats.infer_counts
    executions = stats.executions
    request_s = queue_s = infer_s = 0.0
    input_total = output_total = rows_total = 0
    unqueued = 0
    # Executions of size 1 (unbatched requests of one row): count, infer s, input, output ns.
    ones = ones_input = ones_output = 0
    ones_s = 0.0
    now = 0.0
    for clock in run:
        rows, now = clock.rows, clock.end
        marks = clock._phases  # None: admitted, then (if at all) straight to the device
        batch = clock.batch
        if marks is None:
            device_at = clock.device_at
            total = now - clock.start
            infer = now - device_at if device_at is not None else 0.0
            unqueued += 1  # queued 0 s: the first bucket
        else:
            total, queued, infer = _phases(marks, now)
            queue_counts[_bisect(bounds, queued)] += 1
            queue_s += queued
        compute = clock.compute_ns if batch is None else batch.compute_ns
        if compute:  # the worker's own times; the rest of the round trip is transport
            input_ns, infer_ns, output_ns = compute
            infer = infer_ns / 1e9
            input_total += input_ns
            output_total += output_ns
        else:
            input_ns = output_ns = 0
        ok[index] += 1
        rows_total += rows
        request_counts[_bisect(bounds, total)] += 1
        request_s += total
        infer_counts[_bisect(bounds, infer)] += 1
        infer_s += infer
        if batch is None:
            if rows <= 1:
                ones += 1
                ones_s += infer
                ones_input += input_ns
                ones_output += output_ns
                continue
            size = rows
        elif not batch.counted:
            batch.counted = True
            size = batch.rows if batch.rows > 1 else 1
        else:
            continue  # its batch's execution was counted by another of its requests
        _add_executions(executions, size, 1, infer, input_ns, output_ns)
    queue_counts[0] += unqueued
    stats.request_s += request_s
    stats.queue_s += queue_s
    stats.infer_s += infer_s
    stats.input_ns += input_total
    stats.output_ns += output_total
    stats.inference_count += rows_total
    if now > stats.last_inference:
        stats.last_inference = now
    if ones:
        _add_executions(executions, 1, ones, ones_s, ones_input, ones_output)


def _add_executions(
    executions: dict[int, list[float]],
    size: int,
    count: int,
    infer_s: float,
    input_ns: int,
    output_ns: int,
) -> None:
    """Add ``count`` executions of batch size ``size`` to ``executions``' row for it: count,
    seconds on the device, input and output nanoseconds."""
    executed = executions.get(size)
    if executed is None:
        executions[size] = [count, infer_s, input_ns, output_ns]
    else:
        executed[0] += count
        executed[1] += infer_s
        executed[2] += input_ns
        executed[3] += output_ns


def _phases(marks: list[tuple[Phase, float]], now: float) -> tuple[float, float, float]:
    """(total, queued, on the device) seconds of a request whose ``marks`` end ``now``: queued
    is every ``BATCH_QUEUE`` span, on the device from its last ``DEVICE`` mark."""
    queued = 0.0
    device_at = now
    for index, (phase, at) in enumerate(marks):
        if phase is Phase.DEVICE:
            device_at = at
        elif phase is Phase.BATCH_QUEUE:
            until = marks[index + 1][1] if index + 1 < len(marks) else now
            queued += until - at
    return now - marks[0][1], queued, now - device_at
