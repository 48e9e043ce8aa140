"""What statistics and metrics cost per request (issue 16): on (the default, tracing off)
against ``--no-metrics``, with an A/A contrast (what the method cannot resolve), measured in
one run, printed as one Markdown table with a verdict per goal.

1. End to end (``--p50-rounds``, ``--rate-rounds``): ``--per-arm`` ``modelyard serve``
   processes with the defaults and as many with ``--no-metrics`` (the tiny ONNX MLP,
   unbatched), all up at once, started alike (``PYTHONHASHSEED=0``, ``setarch -R``), loaded by
   this process alone over persistent connections (``bench/interleaved.py``): per round, one
   block of ``--block`` sequential requests per server (its p50) and, in the second phase, one
   ``--window``-second window of 64 requests in flight per server (its req/s), order rotated
   every round; each server's front-end and worker CPU per request over the same blocks and
   windows. Per round an arm's value is the mean of its processes; the figure is the median of
   the per-round differences on - off with a bootstrap 95 % interval, and the A/A contrast
   the same for two groups made of half of each arm (on, off2 against off, on2; on against on2
   with one process per arm). A goal (added p50 at most 20 µs, loss at most 3 %) is met when
   the whole interval is within it, missed when the whole interval is beyond it; otherwise
   "not resolved", with the interval; the verdict says when the A/A interval leaves out 0 or
   is wider than the goal.
2. In one process, CPU time (``--cpu-rounds``): the KServe REST path (the real Starlette app,
   data plane and hooks) and the KServe gRPC path (the ``ModelInfer`` handler as the gRPC server
   registers it, wrappers included, without the transport), over an in-process servable that
   answers at once, 1 and 64 calls in flight (``--in-flight``); on, off and on2 side by side in
   one event loop, rotated batches.
3. Instructions per request (``--callgrind``): the in-process paths under valgrind's callgrind,
   for N1 and N2 requests; (I(N2) - I(N1)) / (N2 - N1) is the cost of one request without
   start-up. On a loaded machine this is the stable number. (The real front end's, on and
   off: ``bench/frontend_callgrind.py``.)

    python bench/observability_cost.py --p50-rounds 300 --block 100 --rate-rounds 96 \
        --window 0.3 --per-arm 2 [--protocols kserve_json,kserve_grpc] [--cpu-rounds 12] \
        [--callgrind] [--json out.json] [--table out.md]

It prints how long the end-to-end part takes before it starts (for a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from ab_throughput import verdict
from bench_models import TINY, write_mlp
from observability_inprocess import IN_PROCESS, callgrind, cpu_time
from report import git_state

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@contextmanager
def serve(config: Path, root: Path, *flags: str, name: str = "") -> Iterator[dict[str, int]]:
    ports_file = root / f"ports-{name or '-'.join(flags)}.json"
    command = [PYTHON, "-m", "modelyard", "serve", str(config), "--port", "0",
               "--rest_api_port", "0", f"--ports-file={ports_file}", "--log-level", "WARNING",
               *flags]  # fmt: skip
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(root / "cache")}
    env["MODELYARD_INTRA_OP_THREADS"] = "1"
    # Two servers with the same flags must be the same process as far as possible: the same
    # string hashes (dict layouts) and, with setarch -R, the same addresses (no ASLR; it is
    # inherited by the workers). Otherwise two identical servers differ by tens of µs of CPU
    # per request (the A/A figure), which no number of rounds averages away.
    env["PYTHONHASHSEED"] = "0"
    if shutil.which("setarch"):
        command = ["setarch", platform.machine(), "-R", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while not ports_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"modelyard serve {flags} did not start")
            time.sleep(0.1)
        ports: dict[str, int] = json.loads(ports_file.read_text())
        ports["pid"] = process.pid  # for its CPU time (bench/ab_throughput.py)
        while httpx.get(f"http://127.0.0.1:{ports['rest']}/v2/health/ready").status_code != 200:
            time.sleep(0.1)
        yield ports
    finally:
        process.terminate()
        process.wait(60)


def ab_part(
    protocols: tuple[str, ...],
    *,
    p50_rounds: int,
    block: int,
    rate_rounds: int,
    window: float,
    ramp: float = 0.05,
    clients: int = 64,
    per_arm: int = 2,
) -> dict[str, Any]:
    """``per_arm`` servers with the defaults (``on``: statistics and metrics on, tracing off)
    and as many with ``--no-metrics`` (``off``), one config, all up at once (``arms``), loaded
    by this process alone (``bench/interleaved.py``): per protocol, ``p50_rounds`` rounds of one
    ``block``-request block at 1 client per server, then ``rate_rounds`` rounds of one
    ``window``-second window at ``clients`` clients per server, order rotated every round;
    paired per round, on against off, and the A/A contrast."""
    from interleaved import Target, interleaved

    root = Path(tempfile.mkdtemp(prefix="obs-ab-"))
    write_mlp(TINY, root / TINY.name / "1")
    config = root / "modelyard.yaml"
    config.write_text(f"models:\n  - name: {TINY.name}\n    base_path: {root / TINY.name}\n")
    report: dict[str, Any] = {}
    names, groups = arms(per_arm)
    with ExitStack() as stack:
        targets = []
        for index, name in enumerate(names):
            flags = ["--no-metrics"] if name.startswith("off") else []
            p = stack.enter_context(serve(config, root, *flags, name=f"{index}"))
            targets.append(Target(name, p["rest"], p["grpc"], p["pid"]))
        for protocol in protocols:
            started = time.monotonic()
            raw = _uvloop_run(
                interleaved(
                    targets, protocol, p50_rounds_count=p50_rounds, block=block,
                    rate_rounds_count=rate_rounds, window=window, ramp=ramp, clients=clients,
                    progress=lambda line, p=protocol: print(p, line, flush=True),
                )
            )  # fmt: skip
            got = summarize_rounds(raw, groups)
            got.update(
                protocol=protocol, p50_rounds=p50_rounds, block=block, rate_rounds=rate_rounds,
                per_arm=per_arm,
                window=window, ramp=ramp, clients=clients, raw=raw,
                seconds=time.monotonic() - started,
            )  # fmt: skip
            report[protocol] = got
            print(protocol, json.dumps(_shown(got)), flush=True)
    return report


def _uvloop_run(coroutine: Any) -> Any:
    import uvloop

    return uvloop.run(coroutine)


def arms(per_arm: int) -> tuple[list[str], dict[str, list[str]]]:
    """The servers to start for ``per_arm`` processes per arm, in start order, and the groups
    the figures compare: ``on`` against ``off`` (the arms), and the A/A contrast ``on`` against
    ``on2``. With one process per arm that is three servers (on, off, on2): the A/A compares
    two processes with the same flags. With two or more (on, off, on2, off2, ...), an arm's
    figure is the mean of its processes, and the A/A contrast swaps half of each arm (on, off2
    against off, on2, ...): groups of the same size as the arms, each half on and half off, so
    a real effect cancels in it and what it shows is what the spread between processes with
    the same flags does to a figure of that size."""
    if per_arm == 1:
        return ["on", "off", "on2"], {"on": ["on"], "off": ["off"], "on2": ["on2"]}
    ons = ["on", *(f"on{i}" for i in range(2, per_arm + 1))]
    offs = ["off", *(f"off{i}" for i in range(2, per_arm + 1))]
    half = per_arm // 2
    placebo_a = [*ons[: per_arm - half], *offs[per_arm - half :]]
    placebo_b = [*offs[: per_arm - half], *ons[per_arm - half :]]
    names = [n for pair in zip(ons, offs, strict=True) for n in pair]
    return names, {"on": ons, "off": offs, "aa_a": placebo_a, "aa_b": placebo_b}


def summarize_rounds(raw: dict[str, Any], groups: dict[str, list[str]]) -> dict[str, Any]:
    """Per group (``arms``) the median over rounds of its per-round mean; per round the
    differences on - off and (A/A) on - on2, or aa_a - aa_b with several processes per arm,
    summarised (``ab_throughput.summarize``): p50 in µs, req/s in per cent, CPU per request in
    µs. Keys ``on-off`` and ``on-on2`` either way."""
    from ab_throughput import summarize

    one, many = raw["one"], raw["many"]

    def arm(series: dict[str, list[float]] | None, group: str) -> list[float]:
        if not series:
            return []
        members = [series[n] for n in groups[group]]
        return [statistics.fmean(v) for v in zip(*members, strict=True)]

    out: dict[str, Any] = {"groups": groups}
    for g in groups:
        out[g] = {
            key: statistics.median(arm(series, g)) if series else float("nan")
            for key, series in (
                ("p50_us", one.get("p50_us")), ("rps", many.get("rps")),
                ("front_us_one", one.get("front_us")), ("front_us_many", many.get("front_us")),
                ("worker_us_many", many.get("worker_us")),
                ("client_us_one", one.get("client_us")), ("client_us_many", many.get("client_us")),
                ("front_busy_many", many.get("front_busy")),
            )
        }  # fmt: skip
    aa = ("on", "on2") if "on2" in groups and len(groups) == 3 else ("aa_a", "aa_b")
    for label, (a, b) in (("on-off", ("on", "off")), ("on-on2", aa)):
        diffs: dict[str, Any] = {}
        if one:
            x, y = arm(one["p50_us"], a), arm(one["p50_us"], b)
            diffs["p50_added_us"] = summarize([p - q for p, q in zip(x, y, strict=True)])
            x, y = arm(one["front_us"], a), arm(one["front_us"], b)
            diffs["front_added_us_one"] = summarize([p - q for p, q in zip(x, y, strict=True)])
        if many:
            x, y = arm(many["rps"], a), arm(many["rps"], b)
            # A round whose reference answered nothing in its window (a stall of the whole
            # window, seen only on a loaded machine) has no ratio: it is left out, and counted.
            ratios = [100 * (p / q - 1) for p, q in zip(x, y, strict=True) if q > 0]
            diffs["rps_change_pct"] = summarize(ratios)
            diffs["rps_rounds_left_out"] = len(x) - len(ratios)
            x, y = arm(many["front_us"], a), arm(many["front_us"], b)
            diffs["front_added_us_many"] = summarize([p - q for p, q in zip(x, y, strict=True)])
        out[label] = diffs
    return out


def _shown(got: dict[str, Any]) -> dict[str, Any]:
    """A rounds report without its raw figures and per-round values (for the console)."""
    out: dict[str, Any] = {}
    for key, value in got.items():
        if key == "raw":
            continue
        if isinstance(value, dict):
            value = {
                k: {kk: vv for kk, vv in v.items() if kk != "values"} if isinstance(v, dict) else v
                for k, v in value.items()
            }
        out[key] = value
    return out


# -- the table of docs/operations.md -------------------------------------------------------------

_NAMES = {
    "kserve_json": "KServe REST JSON",
    "tfs_rest": "TF Serving REST",
    "kserve_grpc": "KServe gRPC",
}


P50_GOAL_US = 20.0
"""Issue 16's goals: the added p50 at 1 client at most 20 µs, the loss of req/s at 64
clients at most 3 %."""
LOSS_GOAL_PCT = 3.0


def _interval(got: dict[str, Any], unit: str) -> str:
    return f"{got['median']:+.1f} {unit} [{got['low']:+.1f}, {got['high']:+.1f}]"


def _aa_warning(aa: dict[str, Any], goal: float) -> str:
    """What the A/A interval says about a verdict: nothing when it covers 0 and is narrower
    than the goal; a warning when it leaves out 0 (processes with the same flags differed beyond
    the rounds' spread, so an on/off difference of that size is not the counting's), or when it
    is wider than the goal (the method does not resolve the goal on this machine now: a
    verdict, even "met", may be noise)."""
    notes = []
    if aa["low"] > 0 or aa["high"] < 0:
        notes.append("leaves out 0")
    if aa["high"] - aa["low"] > goal:
        notes.append(f"is wider than the goal ({aa['high'] - aa['low']:.1f} > {goal:g})")
    if not notes:
        return ""
    return f"; but the A/A interval [{aa['low']:+.1f}, {aa['high']:+.1f}] " + " and ".join(notes)


def table(report: dict[str, Any]) -> str:
    """The issue's figures as a Markdown table, from whatever parts ``report`` holds: per
    protocol, p50 at 1 client and req/s at 64 clients, on and off, what statistics and metrics
    add (median of per-round differences [bootstrap 95 % interval]) and the same for on against
    on (A/A); then the CPU per request; then the verdicts against the goals."""
    rows = [
        "| measure | protocol | on | off | on - off, median [95 % interval] | on - on2 (A/A) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for protocol, got in report.get("ab", {}).items():
        name, on, off = _NAMES[protocol], got["on"], got["off"]
        diff, aa = got["on-off"], got["on-on2"]
        if "p50_added_us" in diff:
            rows += [
                f"| p50 at 1 client ({got['p50_rounds']} rounds of {got['block']}-request "
                f"blocks) | {name} | {on['p50_us']:.1f} µs | {off['p50_us']:.1f} µs "
                f"| **{_interval(diff['p50_added_us'], 'µs')}** "
                f"| {_interval(aa['p50_added_us'], 'µs')} |",
                f"| front-end CPU per request at 1 client | {name} | {on['front_us_one']:.1f} µs "
                f"| {off['front_us_one']:.1f} µs | {_interval(diff['front_added_us_one'], 'µs')} "
                f"| {_interval(aa['front_added_us_one'], 'µs')} |",
            ]
            verdicts.append(
                f"- {name}, added p50 (goal ≤ {P50_GOAL_US:g} µs): "
                + verdict(diff["p50_added_us"], P50_GOAL_US)
                + _aa_warning(aa["p50_added_us"], P50_GOAL_US)
            )
        if "rps_change_pct" in diff:
            stalled = diff.get("rps_rounds_left_out", 0)
            left_out = f"; {stalled} left out: off answered nothing" if stalled else ""
            rows += [
                f"| req/s at {got['clients']} clients ({got['rate_rounds']} rounds of "
                f"{got['window']:g} s windows{left_out}) | {name} | {on['rps']:.0f} "
                f"| {off['rps']:.0f} "
                f"| **{_interval(diff['rps_change_pct'], '%')}** "
                f"| {_interval(aa['rps_change_pct'], '%')} |",
                f"| front-end CPU per request at {got['clients']} clients (front end busy "
                f"{on['front_busy_many']:.0%} / {off['front_busy_many']:.0%} of a core) | {name} "
                f"| {on['front_us_many']:.1f} µs | {off['front_us_many']:.1f} µs "
                f"| {_interval(diff['front_added_us_many'], 'µs')} "
                f"| {_interval(aa['front_added_us_many'], 'µs')} |",
                f"| workers' and load generator's CPU per request at {got['clients']} clients "
                f"| {name} | {on['worker_us_many']:.1f} + {on['client_us_many']:.1f} µs "
                f"| {off['worker_us_many']:.1f} + {off['client_us_many']:.1f} µs | | |",
            ]
            added = diff["front_added_us_many"]["median"]
            front, rest = off["front_us_many"], off["worker_us_many"]
            rows.append(
                f"| req/s loss implied by the front end's added CPU at {got['clients']} clients: "
                f"front end the bottleneck (added / front) ; the 2 cores the bottleneck, "
                f"without / with the generator's CPU | {name} | | "
                f"| {100 * added / (front + added):+.1f} % ; "
                f"{100 * added / (front + rest + added):+.1f} % / "
                f"{100 * added / (front + rest + off['client_us_many'] + added):+.1f} % | |"
            )
            verdicts.append(
                f"- {name}, req/s loss (goal ≤ {LOSS_GOAL_PCT:g} %): "
                + verdict(diff["rps_change_pct"], LOSS_GOAL_PCT, worse="lower")
                + _aa_warning(aa["rps_change_pct"], LOSS_GOAL_PCT)
            )
    for part in report.get("cpu_time", []):
        rows.append(
            f"| front-end CPU per request, in process, {part['in_flight']} in flight "
            f"({part['rounds']} rotated rounds of {part['batch']}) | {_NAMES[part['protocol']]} "
            f"| {part['cpu_us_per_request_on']:.1f} µs | {part['cpu_us_per_request_off']:.1f} µs "
            f"| {_interval(part['added'], 'µs')} | {_interval(part['added_aa'], 'µs')} |"
        )
    for part in report.get("callgrind", []):
        rows.append(
            f"| instructions per request, in process, {part['in_flight']} in flight (callgrind) "
            f"| {_NAMES[part['protocol']]} "
            f"| {part['instructions_per_request_on']:,.0f} "
            f"| {part['instructions_per_request_off']:,.0f} "
            f"| {part['added_instructions_per_request']:+,.0f} ({part['added_pct']:.1f} %) | |"
        )
    text = "\n".join(rows) + "\n"
    if verdicts:
        text += "\n" + "\n".join(verdicts) + "\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--p50-rounds", type=int, default=0,
        help="rounds of one 1-client block per server (0: skip; a multiple of 3 rotates evenly)",
    )  # fmt: skip
    parser.add_argument("--block", type=int, default=100, help="requests per 1-client block")
    parser.add_argument(
        "--rate-rounds", type=int, default=0,
        help="rounds of one 64-client window per server (0: skip)",
    )  # fmt: skip
    parser.add_argument("--window", type=float, default=0.4, help="64-client window, seconds")
    parser.add_argument("--ramp", type=float, default=0.05, help="uncounted start of a window")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--per-arm", type=int, default=2,
        help="server processes per arm (1: on, off, on2; 2: on, off, on2, off2; ...)",
    )  # fmt: skip
    parser.add_argument("--protocols", default=",".join(IN_PROCESS))
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--cpu-rounds", type=int, default=0, help="0: skip the in-process part")
    parser.add_argument(
        "--in-flight", default="1,64", help="in-process calls at once, comma-separated"
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument("--table", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    protocols = tuple(args.protocols.split(","))
    if args.p50_rounds or args.rate_rounds:
        # Quiet box: 1-client blocks about 0.65 ms a request; a window with its ramp, drain
        # and CPU readings about 0.1 s more than its length; servers start in about 20 s.
        per_protocol = (
            2
            * args.per_arm
            * (
                args.p50_rounds * (args.block * 0.00065 + 0.005)
                + args.rate_rounds * (args.ramp + args.window + 0.05)
            )
        )
        minutes = (len(protocols) * (per_protocol + 5) + 20) / 60
        print(f"wall-clock part: about {minutes:.1f} minutes", flush=True)
    report: dict[str, Any] = {"git": _git(), "load_average_at_start": os.getloadavg()}
    if args.cpu_rounds:
        report["cpu_time"] = [
            cpu_time(args.cpu_rounds, 640, p, int(n))
            for n in args.in_flight.split(",")
            for p in protocols
        ]
        for part in report["cpu_time"]:
            print(json.dumps({k: v for k, v in part.items() if k != "raw"}), flush=True)
    if args.callgrind:
        report["callgrind"] = [
            callgrind(128, 640, p, int(n)) for n in args.in_flight.split(",") for p in protocols
        ]
    if args.p50_rounds or args.rate_rounds:
        report["ab"] = ab_part(
            protocols, p50_rounds=args.p50_rounds, block=args.block,
            rate_rounds=args.rate_rounds, window=args.window, ramp=args.ramp,
            clients=args.clients, per_arm=args.per_arm,
        )  # fmt: skip
    report["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    markdown = table(report)
    print(markdown)
    if args.table is not None:
        args.table.write_text(markdown)


def _git() -> str:
    """The commit measured (with ``+`` when ``src`` has changes), for the record."""
    head, dirty = git_state("src")
    return head + ("+" if dirty else "")


if __name__ == "__main__":
    main()
