"""Instructions per request of ``StatsBook.fold`` alone (callgrind), over clocks noted as the
data plane notes a plain success (unbatched, one row, the worker's times told): 64,000 of them
built first, then folded in runs of ``--run`` (default ``FOLD_EVERY``) inside ``operator.call``,
the only code callgrind counts (``--toggle-collect``). Runs under either tree's ``PYTHONPATH``
(it uses only ``RequestClock``'s public methods, the note's slots and ``StatsBook``).

    PYTHONPATH=src python bench/fold_callgrind.py [--run 64]
"""

from __future__ import annotations

import argparse
import gc
import operator
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REQUESTS = 64_000


def _inside(size: int) -> None:
    from modelyard.deadlines import Phase, RequestClock
    from modelyard.ids import VersionKey
    from modelyard.metrics.stats import StatsBook

    key = VersionKey("m", 1)
    lane = 2
    on_clock = "lane" in RequestClock.__slots__  # before session 13: the lane on each clock
    now = time.monotonic()
    runs = []
    for _ in range(REQUESTS // size):
        run = []
        for index in range(size):
            clock = RequestClock(None, model="m", start=now - 0.0003 - (index % 7) * 1e-5)
            clock.enter(Phase.DEVICE, now - 0.0002)
            clock.note_compute((12345, 67890 + index, 23456))
            clock.key, clock.rows, clock.end = key, 1, now
            if on_clock:
                clock.lane = lane  # type: ignore[attr-defined]
            run.append(clock)
        runs.append(run)
    book = StatsBook()
    # Since session 13 one list per lane (``StatsBook.pending``), before it one for all.
    pending = book._pending if on_clock else book._pending[lane]
    gc.collect()
    gc.freeze()

    def fold_all() -> None:
        for run in runs:
            pending.extend(run)  # type: ignore[arg-type]
            book.fold()

    operator.call(fold_all)
    stats = book.get(key)
    assert stats is not None
    assert stats.success_count == size * (REQUESTS // size)


def main() -> None:
    from modelyard.metrics.stats import FOLD_EVERY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=int, default=FOLD_EVERY)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        _inside(args.run)
        return
    with tempfile.TemporaryDirectory(prefix="modelyard-fold-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=_operator_call", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--inside", "--run", str(args.run)],
            check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        annotated = subprocess.run(
            ["callgrind_annotate", str(out)], capture_output=True, text=True, check=True
        ).stdout
    found = re.search(r"([\d,]+) \([^)]*\)\s+PROGRAM TOTALS", annotated)
    if found is None:
        raise SystemExit("no totals in callgrind's output")
    total = int(found.group(1).replace(",", ""))
    runs = REQUESTS // args.run
    print(f"fold, runs of {args.run}: {total / (runs * args.run):,.0f} instructions a request")


if __name__ == "__main__":
    main()
