"""``StatsBook.fold`` adds up the common case column by column (in C) and anything else one
request at a time: whichever way a mix of requests is added up, the statistics a user reads
(counts, histograms, sums, executions per batch size, outcomes per protocol) are the same."""

from __future__ import annotations

import contextvars
import random

import pytest

from modelyard.deadlines import BatchRun, Phase, RequestClock
from modelyard.ids import VersionKey
from modelyard.metrics import stats as stats_module
from modelyard.metrics.stats import FOLD_EVERY, StatsBook, VersionStats
from modelyard.observability.calls import CURRENT, LANES, Protocol

KEYS = (VersionKey("a", 1), VersionKey("b", 3))


def _requests(seed: int, mix: str) -> list[tuple[VersionKey, Protocol, RequestClock, int]]:
    """2.5 folds' worth of successes: ``mix`` says what varies between them."""
    rng = random.Random(seed)
    varies = mix.split()
    out = []
    run: BatchRun | None = None
    for index in range(FOLD_EVERY * 5 // 2):
        start = 1000.0 + index * 0.01
        clock = RequestClock(None, model="m", start=start)
        rows = rng.choice((1, 4)) if "rows" in varies else 2
        if "batched" in varies and index % 3 == 0:
            if run is None or index % 6 == 0:
                run = BatchRun(rows * 2)
                run.compute_ns = (1000, rng.randrange(10**4, 10**7), 2000)
            clock.batch = run
            clock.enter(Phase.BATCH_QUEUE, start + rng.uniform(0, 1e-3))
        clock.enter(Phase.DEVICE, start + rng.uniform(1e-3, 2e-3))
        if "told" in varies or ("half-told" in varies and index % 2 == 0):
            clock.note_compute((rng.randrange(10**5), rng.randrange(10**4, 10**7), 5))
        key = KEYS[index % 2] if "versions" in varies else KEYS[0]
        protocol = rng.choice((Protocol.KSERVE_GRPC, Protocol.TFSERVING_REST))
        if "one-protocol" in varies:
            protocol = Protocol.KSERVE_REST
        out.append((key, protocol, clock, rows))
    return out


def _book(
    requests: list[tuple[VersionKey, Protocol, RequestClock, int]], columns: bool
) -> StatsBook:
    book = StatsBook()
    ends = iter([1000.5 + i * 0.013 for i in range(len(requests))])

    def serve() -> None:
        for key, protocol, clock, rows in requests:
            CURRENT.set(LANES[protocol])
            book.ok(key, clock, rows)

    originals = stats_module._fold_unbatched, stats_module._monotonic
    if not columns:
        stats_module._fold_unbatched = lambda *args: False
    stats_module._monotonic = ends.__next__  # known end times, the same for both books
    try:
        contextvars.copy_context().run(serve)
        book.fold()
    finally:
        stats_module._fold_unbatched, stats_module._monotonic = originals
    return book


def _shown(stats: VersionStats) -> dict[str, object]:
    return {
        "outcomes": stats.outcomes,
        "rows": stats.inference_count,
        "last": stats.last_inference,
        "request": (stats.request_counts, round(stats.request_s, 9)),
        "queue": (stats.queue_counts, round(stats.queue_s, 9)),
        "infer": (stats.infer_counts, round(stats.infer_s, 9)),
        "compute": (stats.input_ns, stats.output_ns),
        "batches": {size: [n, i, o] for size, (n, _s, i, o) in stats.batches.items()},
        "batch_infer_ms": {size: round(row[1] / 1e6, 3) for size, row in stats.batches.items()},
        "executions": stats.execution_count,
    }


@pytest.mark.parametrize(
    "mix",
    [
        "plain",
        "told",
        "told one-protocol",
        "rows told",
        "half-told rows",
        "versions told",
        "batched told rows",
    ],
)
def test_the_column_fold_reads_the_same_as_one_request_at_a_time(mix: str) -> None:
    columns = _book(_requests(7, mix), columns=True)
    one_by_one = _book(_requests(7, mix), columns=False)
    read = {key: _shown(s) for key, s in columns.items()}
    assert read == {key: _shown(s) for key, s in one_by_one.items()}
    assert sum(s.success_count for s in columns._versions.values()) == FOLD_EVERY * 5 // 2
