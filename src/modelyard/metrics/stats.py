"""Per-version request statistics: plain numbers updated once per request, shaped when read.

One ``VersionStats`` per model version holds everything the statistics extension
(``/v2/models/{m}/stats``, gRPC ``ModelStatistics``), ``/metrics`` and the live page show about
its traffic. A request writes only raw fields: successes per protocol lane, rows, three
fixed-bucket histogram arrays with their sums (request, queue and compute time, in seconds),
executions per batch size, and for a failure its code. Everything else is derived when read:
success count (the request histogram's count), Triton's nanosecond totals (the sums), the
execution count and the batch-size histogram (the executions per size), outcomes per
protocol. ``StatsBook.ok`` is the write of a success (on every request),
``StatsBook.observe`` the general one (failures; tests).

Why not prometheus_client's metric objects on the hot path: each ``labels(...).inc()`` takes a
lock and a dict look-up of the label tuple, several per request; a request here costs one dict
look-up (its version's stats) and some integer additions.

Async safety: written and read on the server's event loop only (scrapes run there too), so a
reader sees whole requests and nothing needs a lock.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

from modelyard.deadlines import Phase, RequestClock
from modelyard.errors import Code
from modelyard.ids import VersionKey
from modelyard.observability.calls import CURRENT, IN_PROCESS_INDEX, PROTOCOL_LABELS

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
"""Request, queue and compute latencies: tens of microseconds (tiny models on CPU) to seconds."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

FOLD_EVERY = 64
"""Successes recorded before ``StatsBook.fold`` adds them up (readers fold at once): enough to
keep the loop's code in the CPU's caches, few enough that the clocks held are no burden."""

_LANE_INDEX = {label: index for index, label in enumerate(PROTOCOL_LABELS)}


class Histogram:
    """A cumulative-on-export histogram: one count per bucket (upper bounds ``bounds``, then
    +Inf) and the sum of observed values."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(
        self, bounds: Sequence[float], counts: list[int] | None = None, total: float = 0.0
    ) -> None:
        """``counts`` and ``total``: start from these (a view of counts kept elsewhere)."""
        self.bounds = tuple(bounds)
        self.counts = counts if counts is not None else [0] * (len(self.bounds) + 1)
        self.sum = total

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, count of values <= it), +Inf last."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


class VersionStats:
    """The traffic of one model version since the server started (Triton's counters).

    Raw fields, written per request: ``ok`` successes per protocol lane (``PROTOCOL_LABELS``'
    order); ``inference_count`` rows; ``last_inference`` the ``time.monotonic()`` of the last
    success (0.0: none); ``request_counts``/``queue_counts``/``infer_counts`` histogram arrays
    on ``LATENCY_BUCKETS_S`` (successes only) with their sums in seconds (infer: Triton's
    compute_infer, the model's call as the worker measured it; the whole time on the device
    where the worker did not say); ``input_ns``/``output_ns`` Triton's compute_input and
    compute_output (the worker decoding the request's tensors, encoding the outputs; each
    request of a batch gets its execution's); ``executions`` batch size -> [executions,
    compute_infer seconds, compute_input ns, compute_output ns] (a batch counts once, for the
    first of its requests to end); ``fail_count``, ``fail_s`` and ``failures`` (code ->
    requests) and ``failed``
    ((protocol, code) -> requests) for failures. The rest are read-time views, in Triton's
    units (integer nanoseconds).
    """

    __slots__ = (
        "executions",
        "fail_count",
        "fail_s",
        "failed",
        "failures",
        "infer_counts",
        "infer_s",
        "inference_count",
        "input_ns",
        "last_inference",
        "ok",
        "output_ns",
        "queue_counts",
        "queue_s",
        "request_counts",
        "request_s",
    )

    def __init__(self) -> None:
        self.ok = [0] * len(PROTOCOL_LABELS)
        self.inference_count = 0
        self.last_inference = 0.0
        buckets = len(LATENCY_BUCKETS_S) + 1
        self.request_counts = [0] * buckets
        self.request_s = 0.0
        self.queue_counts = [0] * buckets
        self.queue_s = 0.0
        self.infer_counts = [0] * buckets
        self.infer_s = 0.0
        self.input_ns = 0
        self.output_ns = 0
        self.executions: dict[int, list[float]] = {}
        self.fail_count = 0
        self.fail_s = 0.0
        self.failures: dict[Code, int] = {}
        self.failed: dict[tuple[str, Code], int] = {}

    # -- read-time views ------------------------------------------------------------------

    @property
    def success_count(self) -> int:
        return sum(self.ok)

    @property
    def success_ns(self) -> int:
        return _ns(self.request_s)

    @property
    def fail_ns(self) -> int:
        return _ns(self.fail_s)

    @property
    def queue_count(self) -> int:
        return self.success_count  # every success has a queue time (0 without a batcher)

    @property
    def queue_ns(self) -> int:
        return _ns(self.queue_s)

    @property
    def infer_count(self) -> int:
        return self.success_count

    @property
    def infer_ns(self) -> int:
        return _ns(self.infer_s)

    @property
    def execution_count(self) -> int:
        return sum(int(row[0]) for row in self.executions.values())

    @property
    def batches(self) -> dict[int, list[int]]:
        """Batch size -> [executions, compute_infer ns, compute_input ns, compute_output ns]."""
        return {
            size: [int(n), _ns(s), int(i), int(o)] for size, (n, s, i, o) in self.executions.items()
        }

    @property
    def outcomes(self) -> dict[tuple[str, str], int]:
        """(protocol, outcome) -> requests; outcome is ``OK`` or the failure's code."""
        out = {(PROTOCOL_LABELS[i], "OK"): n for i, n in enumerate(self.ok) if n}
        out.update(((protocol, code.value), n) for (protocol, code), n in self.failed.items())
        return out

    @property
    def request_duration(self) -> Histogram:
        return Histogram(LATENCY_BUCKETS_S, list(self.request_counts), self.request_s)

    @property
    def queue_duration(self) -> Histogram:
        return Histogram(LATENCY_BUCKETS_S, list(self.queue_counts), self.queue_s)

    @property
    def infer_duration(self) -> Histogram:
        return Histogram(LATENCY_BUCKETS_S, list(self.infer_counts), self.infer_s)

    @property
    def batch_size(self) -> Histogram:
        """Rows per execution (1 per unbatched request), on ``BATCH_SIZE_BUCKETS``."""
        hist = Histogram(BATCH_SIZE_BUCKETS)
        for size, (n, *_) in self.executions.items():
            hist.counts[bisect.bisect_left(BATCH_SIZE_BUCKETS, size)] += int(n)
            hist.sum += size * n
        return hist

    @property
    def last_inference_ms(self) -> int:
        """When the last successful request ended, in ms since the epoch (0: never)."""
        if not self.last_inference:
            return 0
        return int((time.time() - (time.monotonic() - self.last_inference)) * 1000)


_get_lane = CURRENT.get
_set_lane = CURRENT.set
_monotonic = time.monotonic
_bisect = bisect.bisect_left
_DEVICE = Phase.DEVICE


class StatsBook:
    """Every version's ``VersionStats`` (created on a version's first request), and the
    requests refused before any model version was found, by protocol and code."""

    def __init__(self) -> None:
        # Keyed by (model, version): a tuple of a str and an int hashes in C, a VersionKey
        # (a dataclass) through Python code, and this look-up is on every request.
        self._versions: dict[tuple[str, int], VersionStats] = {}
        self.rejected: dict[tuple[str, Code], int] = {}
        # Successes recorded by ``ok`` and not yet folded into ``_versions`` (``fold``).
        self._pending: list[tuple[VersionKey, int, RequestClock, int, float]] = []

    def of(self, key: VersionKey) -> VersionStats:
        if self._pending:
            self.fold()
        pair = (key.model, key.version)
        stats = self._versions.get(pair)
        if stats is None:
            stats = self._versions[pair] = VersionStats()
        return stats

    def get(self, key: VersionKey) -> VersionStats | None:
        if self._pending:
            self.fold()
        return self._versions.get((key.model, key.version))

    def items(self) -> Iterator[tuple[VersionKey, VersionStats]]:
        if self._pending:
            self.fold()
        return iter([(VersionKey(m, v), s) for (m, v), s in sorted(self._versions.items())])

    def ok(self, key: VersionKey, clock: RequestClock, rows: int, index: int = -1) -> None:
        """A request on ``key`` succeeded now: ``clock`` holds its phases, ``rows`` its rows
        (dim 0). Counted on lane ``index`` (``PROTOCOL_LABELS``: the hot paths' adapters pass
        theirs), or, without one (-1), on the current call's protocol (``in_process`` outside
        any). A current call learns that it was counted (an observed ``Call`` is filled in, a
        ``Lane`` replaced by its ``done`` twin); on the hot paths there is none, and this is a
        context variable read, a tuple and an append.

        The data plane calls this once per request (as ``ServerMetrics.observe_ok``): it only
        notes the request (its key, lane, clock, rows and end) for ``fold`` to add up."""
        call = _get_lane()
        if call is not None:
            if index < 0:
                index = call.index
            if call.full:  # an observed call: the access log and traces read these
                call.counted = True  # type: ignore[union-attr]
                call.clock = clock  # type: ignore[union-attr]
                call.rows = rows  # type: ignore[union-attr]
                call.model = key.model  # type: ignore[union-attr]
                call.version = str(key.version)  # type: ignore[union-attr]
            else:
                _set_lane(call.done)  # type: ignore[union-attr]
        elif index < 0:
            index = IN_PROCESS_INDEX
        pending = self._pending
        pending.append((key, index, clock, rows, _monotonic()))
        if len(pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Add the successes ``ok`` recorded since the last fold to their versions' numbers.

        Called by every reader (``of``, ``get``, ``items``) and every ``FOLD_EVERY`` requests:
        the arithmetic runs here, in one tight loop over a few dozen requests, rather than on
        each request's path, where its code and data would have to be brought back into the
        CPU's caches every time (measured: several times the cost of the same loop). The
        requests of one fold are split into runs of one version (usually one run: a version's
        requests come together), each added up by ``_fold_run``."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        versions = self._versions
        count = len(pending)
        start = 0
        while start < count:
            key = pending[start][0]
            end = start + 1
            while end < count and pending[end][0] is key:
                end += 1
            pair = (key.model, key.version)
            stats = versions.get(pair)
            if stats is None:
                stats = versions[pair] = VersionStats()
            _fold_run(stats, pending if end - start == count else pending[start:end])
            start = end

    def observe(
        self,
        key: VersionKey,
        clock: RequestClock | None,
        rows: int,
        protocol: str,
        code: Code | None,
    ) -> None:
        """One request on ``key`` ended now: succeeded (``code`` None) or failed with ``code``,
        on ``protocol`` (a ``PROTOCOL_LABELS`` label). The current call is not told.

        ``clock`` gives its phases (None: it never reached a model, e.g. refused while being
        decoded: it counts as a failure of no duration); ``rows``: its rows (dim 0)."""
        if code is None:
            if clock is None:
                raise ValueError("a success has a clock")
            pending = self._pending
            pending.append((key, _LANE_INDEX[protocol], clock, rows, _monotonic()))
            if len(pending) >= FOLD_EVERY:
                self.fold()
            return
        stats = self.of(key)
        stats.fail_count += 1
        stats.failures[code] = stats.failures.get(code, 0) + 1
        failed = (protocol, code)
        stats.failed[failed] = stats.failed.get(failed, 0) + 1
        if clock is not None:
            stats.fail_s += _monotonic() - clock._phases[0][1]

    def reject(self, protocol: str, code: Code) -> None:
        """A request refused before a model version was found (an unknown model, a bad path)."""
        key = (protocol, code)
        self.rejected[key] = self.rejected.get(key, 0) + 1


def _fold_run(
    stats: VersionStats, run: list[tuple[VersionKey, int, RequestClock, int, float]]
) -> None:
    """Add successes of one version (``StatsBook.ok``'s notes) to ``stats``: the plain ones
    (unbatched, one row, admitted then on the device) in the loop here, which does only what
    they need (measured with callgrind: ~25 % fewer instructions a request than the general
    loop), the others, if any, by ``_fold_each``."""
    bounds = LATENCY_BUCKETS_S
    ok = stats.ok
    request_counts = stats.request_counts
    infer_counts = stats.infer_counts
    request_s = infer_s = 0.0
    input_total = output_total = rows_total = plain = 0
    others = None
    for note in run:
        _, index, clock, rows, now = note
        marks = clock._phases
        if rows <= 1 and clock.batch is None and len(marks) == 2 and marks[1][0] is _DEVICE:
            compute = clock.compute_ns
            if compute:  # the worker's own times; the rest of the round trip is transport
                infer = compute[1] / 1e9
                input_total += compute[0]
                output_total += compute[2]
            else:
                infer = now - marks[1][1]
            total = now - marks[0][1]
            ok[index] += 1
            plain += 1
            rows_total += rows
            request_counts[_bisect(bounds, total)] += 1
            request_s += total
            infer_counts[_bisect(bounds, infer)] += 1
            infer_s += infer
        elif others is None:
            others = [note]
        else:
            others.append(note)
    if plain:
        stats.queue_counts[0] += plain  # queued 0 s: the first bucket
        stats.request_s += request_s
        stats.infer_s += infer_s
        stats.input_ns += input_total
        stats.output_ns += output_total
        stats.inference_count += rows_total
        executed = stats.executions.get(1)  # one execution of size 1 each
        if executed is None:
            stats.executions[1] = [plain, infer_s, input_total, output_total]
        else:
            executed[0] += plain
            executed[1] += infer_s
            executed[2] += input_total
            executed[3] += output_total
    if others is not None:
        _fold_each(stats, others)
    stats.last_inference = run[-1][4]


def _fold_each(
    stats: VersionStats, run: list[tuple[VersionKey, int, RequestClock, int, float]]
) -> None:
    """Add successes of one version (``StatsBook.ok``'s notes) to ``stats``. Sums are kept in
    local variables and written once (a float or int held only by a local is updated in place;
    one held by an attribute is replaced by a new object on every addition), and unbatched
    requests of one row, the common case, add to their execution row once per run."""
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
    for _, index, clock, rows, now in run:
        marks = clock._phases  # what ``clock.marks`` returns, without a property call
        batch = clock.batch
        if len(marks) == 2 and marks[1][0] is _DEVICE:  # unbatched: admitted, then device
            total = now - marks[0][1]
            infer = now - marks[1][1]
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
        executed = executions.get(size)
        if executed is None:
            executions[size] = [1, infer, input_ns, output_ns]
        else:
            executed[0] += 1
            executed[1] += infer
            executed[2] += input_ns
            executed[3] += output_ns
    queue_counts[0] += unqueued
    stats.request_s += request_s
    stats.queue_s += queue_s
    stats.infer_s += infer_s
    stats.input_ns += input_total
    stats.output_ns += output_total
    stats.inference_count += rows_total
    stats.last_inference = now
    if ones:
        executed = executions.get(1)
        if executed is None:
            executions[1] = [ones, ones_s, ones_input, ones_output]
        else:
            executed[0] += ones
            executed[1] += ones_s
            executed[2] += ones_input
            executed[3] += ones_output


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
