"""Per-version request statistics: plain integers updated once per request, read when asked.

One ``VersionStats`` per model version holds everything the statistics extension
(``/v2/models/{m}/stats``, gRPC ``ModelStatistics``) and ``/metrics`` show about its traffic:
success and failure counts and durations, queue and compute durations, rows and executions,
executions by batch size, failures by reason, and histograms. ``StatsBook.observe`` is the one
write, called by the data plane when a request ends; the exporters only read.

Why not prometheus_client's metric objects on the hot path: each ``labels(...).inc()`` takes a
lock and a dict look-up of the label tuple, several per request; a request here costs one dict
look-up (its version's stats) and some integer additions. Histograms are fixed-bucket arrays.

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

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
"""Request, queue and compute latencies: tens of microseconds (tiny models on CPU) to seconds."""

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    """A cumulative-on-export histogram: one count per bucket (upper bounds ``bounds``, then
    +Inf) and the sum of observed values."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

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


class VersionStats:
    """The traffic of one model version since the server started (Triton's counters).

    Durations are integer nanoseconds, as Triton reports them. A request that fails counts in
    ``fail_*`` only; one that succeeds in ``success_*``, ``queue_*`` and ``infer_*``.
    ``batches``: batch size -> [executions, compute ns] (a batch counts once, for the first of
    its requests to end). ``outcomes``: (protocol, outcome) -> requests, where outcome is
    ``OK`` or the failure's code. The histograms of request, queue and compute time use
    ``LATENCY_BUCKETS_S`` (``StatsBook.observe`` relies on it).
    """

    __slots__ = (
        "batch_size",
        "batches",
        "execution_count",
        "fail_count",
        "fail_ns",
        "failures",
        "infer_count",
        "infer_duration",
        "infer_ns",
        "inference_count",
        "last_inference",
        "outcomes",
        "queue_count",
        "queue_duration",
        "queue_ns",
        "request_duration",
        "success_count",
        "success_ns",
    )

    def __init__(self) -> None:
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_count = 0
        self.queue_ns = 0
        self.infer_count = 0
        self.infer_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0.0  # time.monotonic() of the last success; 0.0: none yet
        self.failures: dict[Code, int] = {}
        self.outcomes: dict[tuple[str, str], int] = {}
        self.batches: dict[int, list[int]] = {}
        self.request_duration = Histogram(LATENCY_BUCKETS_S)
        self.queue_duration = Histogram(LATENCY_BUCKETS_S)
        self.infer_duration = Histogram(LATENCY_BUCKETS_S)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)

    @property
    def last_inference_ms(self) -> int:
        """When the last successful request ended, in ms since the epoch (0: never)."""
        if not self.last_inference:
            return 0
        return int((time.time() - (time.monotonic() - self.last_inference)) * 1000)


class StatsBook:
    """Every version's ``VersionStats`` (created on a version's first request), and the
    requests refused before any model version was found, by protocol and code."""

    def __init__(self) -> None:
        # Keyed by (model, version): a tuple of a str and an int hashes in C, a VersionKey
        # (a dataclass) through Python code, and this look-up is on every request.
        self._versions: dict[tuple[str, int], VersionStats] = {}
        self.rejected: dict[tuple[str, Code], int] = {}

    def of(self, key: VersionKey) -> VersionStats:
        pair = (key.model, key.version)
        stats = self._versions.get(pair)
        if stats is None:
            stats = self._versions[pair] = VersionStats()
        return stats

    def get(self, key: VersionKey) -> VersionStats | None:
        return self._versions.get((key.model, key.version))

    def items(self) -> Iterator[tuple[VersionKey, VersionStats]]:
        return iter([(VersionKey(m, v), s) for (m, v), s in sorted(self._versions.items())])

    def observe(
        self,
        key: VersionKey,
        clock: RequestClock | None,
        rows: int,
        protocol: str,
        code: Code | None,
    ) -> None:
        """One request on ``key`` ended now: succeeded (``code`` None) or failed with ``code``.

        ``clock`` gives its phases (None: it never reached a model, e.g. refused while being
        decoded: it counts as a failure of no duration); ``rows``: its rows (dim 0).

        On every request: written flat (no helper calls, histograms inlined), since each
        Python call here costs about as much as the arithmetic it would wrap."""
        pair = (key.model, key.version)
        stats = self._versions.get(pair)
        if stats is None:
            stats = self._versions[pair] = VersionStats()
        outcome = (protocol, "OK" if code is None else code.value)
        outcomes = stats.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if clock is None:
            stats.fail_count += 1
            if code is not None:
                stats.failures[code] = stats.failures.get(code, 0) + 1
            return
        now = time.monotonic()
        marks = clock._phases  # what ``clock.marks`` returns, without a property call
        start = marks[0][1]
        queued = 0.0
        device_at = now
        for index, (phase, at) in enumerate(marks):
            if phase is Phase.DEVICE:
                device_at = at
            elif phase is Phase.BATCH_QUEUE:
                until = marks[index + 1][1] if index + 1 < len(marks) else now
                queued += until - at
        total_s = now - start
        if code is not None:
            stats.fail_count += 1
            stats.fail_ns += int(total_s * 1e9)
            stats.failures[code] = stats.failures.get(code, 0) + 1
            return
        infer_s = now - device_at
        infer_ns = int(infer_s * 1e9)
        stats.success_count += 1
        stats.success_ns += int(total_s * 1e9)
        stats.queue_count += 1
        stats.queue_ns += int(queued * 1e9)
        stats.infer_count += 1
        stats.infer_ns += infer_ns
        stats.inference_count += rows
        stats.last_inference = now
        hist = stats.request_duration
        hist.counts[bisect.bisect_left(LATENCY_BUCKETS_S, total_s)] += 1
        hist.sum += total_s
        hist = stats.queue_duration
        hist.counts[bisect.bisect_left(LATENCY_BUCKETS_S, queued)] += 1
        hist.sum += queued
        hist = stats.infer_duration
        hist.counts[bisect.bisect_left(LATENCY_BUCKETS_S, infer_s)] += 1
        hist.sum += infer_s
        run = clock.batch
        if run is None:
            size = rows if rows > 1 else 1
        elif not run.counted:
            run.counted = True
            size = run.rows if run.rows > 1 else 1
        else:
            return  # its batch's execution was counted by another of its requests
        stats.execution_count += 1
        stats.batch_size.observe(size)
        batch = stats.batches.get(size)
        if batch is None:
            stats.batches[size] = [1, infer_ns]
        else:
            batch[0] += 1
            batch[1] += infer_ns

    def reject(self, protocol: str, code: Code) -> None:
        """A request refused before a model version was found (an unknown model, a bad path)."""
        key = (protocol, code)
        self.rejected[key] = self.rejected.get(key, 0) + 1
