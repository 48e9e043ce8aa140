"""Per-version request statistics: plain numbers updated once per request, shaped when read.

One ``VersionStats`` per model version holds everything the statistics extension
(``/v2/models/{m}/stats``, gRPC ``ModelStatistics``), ``/metrics`` and the live page show about
its traffic. A request writes only raw fields: successes per protocol lane, rows, three
fixed-bucket histogram arrays with their sums (request, queue and compute time, in seconds),
executions per batch size, and for a failure its code. Everything else is derived when read:
success count (the request histogram's count), Triton's nanosecond totals (the sums), the
execution count and the batch-size histogram (the executions per size), outcomes per
protocol. ``StatsBook.ok`` is the write of a success (``note``: its notes on the request's
clock, added up by ``fold``; the data plane inlines ``note`` on the hot paths),
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

from modelyard.deadlines import RequestClock
from modelyard.errors import Code
from modelyard.ids import VersionKey
from modelyard.metrics.fold import LATENCY_BUCKETS_S as LATENCY_BUCKETS_S
from modelyard.metrics.fold import fold_run
from modelyard.observability.calls import CURRENT, IN_PROCESS_INDEX, PROTOCOL_LABELS

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

FOLD_EVERY = 256
"""Successes recorded in a lane's list before ``StatsBook.fold`` adds them up (readers fold at
once): enough to keep the loop's code in the CPU's caches, few enough that the clocks held are
no burden (a clock is one object: its phases are slots). Measured with callgrind
(``bench/counting_callgrind.py``, session 13): 256 added some 200 instructions a request fewer
than 128 at 64 gRPC calls in flight and at one REST JSON call, with no more garbage
collections; 512 some 70 and 390 more than 128 (128 itself was 150 fewer than 64)."""

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


class StatsBook:
    """Every version's ``VersionStats`` (created on a version's first request), and the
    requests refused before any model version was found, by protocol and code."""

    def __init__(self) -> None:
        # Keyed by (model, version): a tuple of a str and an int hashes in C, a VersionKey
        # (a dataclass) through Python code, and this look-up is on every request.
        self._versions: dict[tuple[str, int], VersionStats] = {}
        self.rejected: dict[tuple[str, Code], int] = {}
        # Successes noted and not yet folded into ``_versions`` (``fold``): their clocks, each
        # with its note (``RequestClock.key``, ``rows``, ``end``), in one list per protocol
        # lane (``PROTOCOL_LABELS``' order), so that neither the note nor the fold handles a
        # lane per request (measured: some 200 instructions a request fewer than a lane on
        # each clock). Lists for the book's life (``fold`` empties them in place): the data
        # plane holds them as ``pending`` and notes into ``pending[lane]``.
        self._pending: list[list[RequestClock]] = [[] for _ in PROTOCOL_LABELS]
        self.pending = self._pending

    def of(self, key: VersionKey) -> VersionStats:
        if any(self._pending):
            self.fold()
        return self._stats_for(key)

    def _stats_for(self, key: VersionKey) -> VersionStats:
        """``key``'s numbers as they stand (no fold), made empty the first time."""
        pair = (key.model, key.version)
        stats = self._versions.get(pair)
        if stats is None:
            stats = self._versions[pair] = VersionStats()
        return stats

    def get(self, key: VersionKey) -> VersionStats | None:
        if any(self._pending):
            self.fold()
        return self._versions.get((key.model, key.version))

    def items(self) -> Iterator[tuple[VersionKey, VersionStats]]:
        if any(self._pending):
            self.fold()
        return iter([(VersionKey(m, v), s) for (m, v), s in sorted(self._versions.items())])

    def ok(self, key: VersionKey, clock: RequestClock, rows: int, index: int = -1) -> None:
        """A request on ``key`` succeeded now: ``clock`` holds its phases, ``rows`` its rows
        (dim 0). Counted on lane ``index`` (``PROTOCOL_LABELS``: the hot paths' adapters pass
        theirs), or, without one (-1), on the current call's protocol (``in_process`` outside
        any). A current call learns that it was counted (an observed ``Call`` is filled in, a
        ``Lane`` replaced by its ``done`` twin).

        The data plane calls this (as ``ServerMetrics.observe_ok``) for a request that is not
        a hot path's counting-only call, and notes those itself (``note``'s lines, inlined):
        either way the request is only noted on its clock (key, rows, end), in its lane's
        list, for ``fold`` to add up."""
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
        self.note(key, clock, rows, index)

    def note(self, key: VersionKey, clock: RequestClock, rows: int, index: int) -> None:
        """Note a success on ``key`` that ended now, counted on lane ``index``, on its clock
        for ``fold``; no current call is told (``ok`` does that). The data plane inlines these
        lines for a hot path's counting-only call (nothing current to tell)."""
        clock.key = key
        clock.rows = rows
        clock.end = _monotonic()
        pending = self._pending[index]
        pending.append(clock)
        if len(pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Add the successes ``ok`` recorded since the last fold to their versions' numbers.

        Called by every reader (``of``, ``get``, ``items``) and every ``FOLD_EVERY`` requests:
        the arithmetic runs here, in one tight loop over a few dozen requests, rather than on
        each request's path, where its code and data would have to be brought back into the
        CPU's caches every time (measured: several times the cost of the same loop). Each
        lane's list is folded in turn, each version's requests in it by ``fold.fold_run`` (one
        pass when the list holds one version's, as usual), which hands back the others'."""
        for lane, pending in enumerate(self._pending):
            if not pending:
                continue
            run: list[RequestClock] | None = pending[:]
            pending.clear()  # in place: the data plane holds this list
            while run:  # one version at a time: usually one pass (they come together)
                key = run[0].key
                run = fold_run(self._stats_for(key), run, lane, key)

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
            self.note(key, clock, rows, _LANE_INDEX[protocol])
            return
        stats = self.of(key)
        stats.fail_count += 1
        stats.failures[code] = stats.failures.get(code, 0) + 1
        failed = (protocol, code)
        stats.failed[failed] = stats.failed.get(failed, 0) + 1
        if clock is not None:
            stats.fail_s += _monotonic() - clock.start

    def reject(self, protocol: str, code: Code) -> None:
        """A request refused before a model version was found (an unknown model, a bad path)."""
        key = (protocol, code)
        self.rejected[key] = self.rejected.get(key, 0) + 1
