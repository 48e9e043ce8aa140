"""A worker's CPU per request without a front end: the worker hop's own cost, trees interleaved.

A blocking client sends the tiny model's ``Infer`` frames one at a time straight to a worker
process (``python -m modelyard.workers.worker``) and reads each reply; the worker's CPU time
(user + system, every thread, from /proc) is divided by the requests. Each source tree gets
its own client process (the frame layout may differ between trees) and its own worker; rounds
alternate between the trees, and the median and lowest of the rounds are shown, so two trees
are compared back to back on a loaded machine.

    python bench/worker_cost.py --tree new=src --tree main=/path/to/main/src --rounds 4

Per thread: the busiest three threads' CPU µs and voluntary context switches per request.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY, write_mlp

TICKS = os.sysconf("SC_CLK_TCK")


def thread_stats(pid: int) -> dict[str, tuple[int, int]]:
    """Per thread of ``pid``: (CPU clock ticks, voluntary context switches)."""
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        switches = next(int(s.split()[1]) for s in status if s.startswith("voluntary_ctxt"))
        out[task.name] = (int(fields[11]) + int(fields[12]), switches)
    return out


def child(rows: int) -> None:
    """One tree's side: start a worker, load the tiny model, then serve "N" lines from stdin
    with N requests each, answering one JSON line per round."""
    try:  # a tree since workers/protocol.py was split (session 13)
        from modelyard.workers.messages import Hello, Infer, Load, Loaded, Outputs
        from modelyard.workers.sockets import FrameReader
    except ImportError:  # a tree from before: the same names, all in protocol.py
        from modelyard.workers.protocol import (  # type: ignore[attr-defined,no-redef]
            FrameReader,
            Hello,
            Infer,
            Load,
            Loaded,
            Outputs,
        )
    from modelyard.workers.protocol import encode

    root = Path(tempfile.mkdtemp(prefix="modelyard-worker-cost-"))
    write_mlp(TINY, root / "tiny" / "1")
    ours, theirs = socket.socketpair()
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "modelyard.workers.worker"),
            *(f"--fd={theirs.fileno()}", "--device=cpu", "--target=cpu"),
        ],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    frames = FrameReader(ours)
    assert isinstance(frames.read(), Hello)
    ours.sendmsg(encode(Load(1, "tiny", 1, str(root / "tiny" / "1"), "onnx", "cpu", None)))
    assert isinstance(frames.read(), Loaded)
    inputs = {"x": TINY.example(rows)}
    ids = iter(range(10, 1 << 62))

    def run(count: int) -> None:
        for _ in range(count):
            ours.sendmsg(encode(Infer(next(ids), "tiny", 1, inputs, None, None)))
            reply = frames.read()
            assert isinstance(reply, Outputs), reply

    run(500)  # warm
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line)
        before = thread_stats(worker.pid)
        began = time.perf_counter()
        run(count)
        took = time.perf_counter() - began
        after = thread_stats(worker.pid)
        per = [
            (
                (c - before.get(t, (0, 0))[0]) * 1e6 / TICKS / count,
                (v - before.get(t, (0, 0))[1]) / count,
            )
            for t, (c, v) in after.items()
        ]
        result = {
            "cpu_us": sum(c for c, _ in per),
            "switches": sum(v for _, v in per),
            "rtt_us": took / count * 1e6,
            "threads": sorted(per, reverse=True)[:3],
        }
        print(json.dumps(result), flush=True)
    ours.close()
    worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="LABEL=SRC_DIR")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.rows)
        return
    if not args.tree:
        parser.error("give at least one --tree LABEL=SRC_DIR")
    trees = [t.split("=", 1) for t in args.tree]
    children: dict[str, subprocess.Popen[str]] = {}
    for label, src in trees:
        env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
        children[label] = subprocess.Popen(
            [sys.executable, __file__, "--child", f"--rows={args.rows}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert children[label].stdout is not None
        if children[label].stdout.readline().strip() != "ready":
            raise SystemExit(f"{label}: the worker did not start")
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    try:
        for round_ in range(args.rounds):
            for label, _ in trees:
                proc = children[label]
                assert proc.stdin is not None
                assert proc.stdout is not None
                proc.stdin.write(f"{args.requests}\n")
                proc.stdin.flush()
                r = json.loads(proc.stdout.readline())
                results[label].append(r)
                threads = " ".join(f"{c:.0f}/{v:.2f}" for c, v in r["threads"])
                print(
                    f"round {round_} {label:8} worker {r['cpu_us']:5.0f} µs/req, "
                    f"{r['switches']:.2f} switches/req, round trip {r['rtt_us']:5.0f} µs; "
                    f"threads (µs/switches) {threads}",
                    flush=True,
                )
    finally:
        for proc in children.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(60)
    print(f"\n{args.rows} row(s), {args.requests} requests a round, {args.rounds} rounds")
    for label, _ in trees:
        rs = results[label]
        print(
            f"{label:8} worker µs/req median {statistics.median(r['cpu_us'] for r in rs):5.0f} "
            f"lowest {min(r['cpu_us'] for r in rs):5.0f}; switches/req "
            f"{statistics.median(r['switches'] for r in rs):.2f}; round trip µs median "
            f"{statistics.median(r['rtt_us'] for r in rs):.0f}"
        )


if __name__ == "__main__":
    main()
