"""What counting (statistics and metrics) adds per request, in instructions, in process.

The real KServe gRPC handler or REST app (``observability_inprocess._build``) over a servable
that answers at once and notes worker times on each request's clock, as the real worker's
replies do; the front end with statistics on and one with ``--no-metrics`` built in ONE
process, each warmed with 300 requests, then N requests of each counted under callgrind inside
their own C entry point (``operator.call`` for on, ``functools.reduce`` for off,
``--toggle-collect``), so start-up and warm-up are not counted and both arms share the process.
Also prints the garbage collector's collections per generation in each arm.

    PYTHONPATH=src python bench/counting_callgrind.py --protocol kserve_grpc --in-flight 64
    PYTHONPATH=src python bench/counting_callgrind.py --protocol kserve_json --in-flight 1

(About 40 s a run on one core; instruction counts do not depend on the machine's load.)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARM = 300


def _drive(protocol: str, requests: int, in_flight: int) -> None:
    """Inside valgrind: build both arms, warm them, then run each inside its C entry point."""
    import asyncio
    import functools
    import gc
    import operator

    sys.path.insert(0, str(HERE))
    import observability_inprocess as harness

    from modelyard import deadlines

    harness.YIELD_IN_INFER = in_flight > 1
    ones = []
    for metrics in (True, False):
        dataplane, one = harness._build(metrics, protocol)
        entry = dataplane._registry.resolve(harness.TINY.name, None, None)
        servable_type = type(entry.replicas[0].servable)
        inner = servable_type.infer

        async def infer(self, inputs, signature_name=None, _inner=inner):  # type: ignore[no-untyped-def]
            out = await _inner(self, inputs, signature_name)
            clock = deadlines.current()
            assert clock is not None
            clock.note_compute((12345, 67890, 23456))  # as the supervisor notes a reply's
            return out

        servable_type.infer = infer
        ones.append(one)
    on, off = ones
    loop = asyncio.new_event_loop()
    for one in (on, off):
        loop.run_until_complete(harness._drive(one, WARM, in_flight))
    gc.collect()
    gc.freeze()

    def run(one: object) -> None:
        loop.run_until_complete(harness._drive(one, requests, in_flight))

    def collections() -> list[int]:
        return [generation["collections"] for generation in gc.get_stats()]

    before = collections()
    operator.call(run, on)
    middle = collections()
    functools.reduce(lambda a, b: run(off), [0, 0])
    after = collections()
    on.check(WARM + requests)
    off.check(WARM + requests)
    print(
        "gc collections per generation: on",
        [b - a for a, b in zip(before, middle, strict=True)],
        "off",
        [b - a for a, b in zip(middle, after, strict=True)],
    )


def _inclusive(annotated: str, function: str) -> int:
    found = re.search(r"([\d,]+) \([^)]*\)\s+\S*:" + function + " ", annotated)
    if found is None:
        raise SystemExit(f"{function} not in callgrind's output")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="kserve_grpc", help="kserve_grpc or kserve_json")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        _drive(args.protocol, args.requests, args.in_flight)
        return
    with tempfile.TemporaryDirectory(prefix="modelyard-counting-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no",
            "--toggle-collect=_operator_call", "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out}",
            sys.executable, __file__, "--inside", "--protocol", args.protocol,
            "--in-flight", str(args.in_flight), "--requests", str(args.requests),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
        ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if ran.returncode != 0:
            raise SystemExit(f"callgrind run failed:\n{ran.stderr[-3000:]}")
        print(next(line for line in ran.stdout.splitlines() if line.startswith("gc ")))
        annotated = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    on = _inclusive(annotated, "_operator_call") / args.requests
    off = _inclusive(annotated, "functools_reduce") / args.requests
    print(
        f"{args.protocol}, {args.in_flight} in flight, {args.requests} requests: "
        f"on {on:,.0f} off {off:,.0f} added {on - off:,.0f} instructions a request"
    )


if __name__ == "__main__":
    main()
