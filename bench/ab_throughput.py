"""Server A against server B in many short alternating rounds, with a stated resolution.

Three servers run at once: ``A``, ``B`` and ``A2`` (A's flags again). The load comes from
h2load (a C client: HTTP/1.1 with ``--h1`` for REST, one HTTP/2 connection of N streams for
gRPC), so the client takes little of the CPU the servers share. Each round loads the servers one
at a time, back to back, in an order rotated every round (A B A2, B A2 A, A2 A B, ...), each for
two short windows: 1 client (its p50 latency, from h2load's per-request log) and ``clients``
clients (its rate). Each server's own CPU per request (front end, and its workers) is read from
/proc over the same windows.

A round gives paired differences: p50(A) - p50(B) in µs, rate(A) / rate(B) - 1, and the same
for A against A2 (an A/A comparison of two identical servers, measured in the same rounds:
what the method cannot tell apart from noise). Drift in the machine's load between rounds falls
on both members of a pair, because they ran seconds apart; what is left is spread between rounds,
so the figure is the **median of the per-round differences with a bootstrap 95 % interval**
(rounds resampled with replacement). ``verdict`` says whether an interval is narrow enough to
decide a goal; it gives a verdict only then.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from request_cost import cpu_seconds, h2load_request


@dataclass(frozen=True)
class Target:
    """One server under test: its label, its REST and gRPC ports, its process id."""

    name: str
    rest: int
    grpc: int
    pid: int


def _cpu(pid: int) -> tuple[float, float]:
    """(the process's CPU seconds, its children's), user + system."""
    return cpu_seconds(psutil.Process(pid))


def h2load_command(
    target: Target, protocol: str, clients: int, seconds: float, warm: float, body: Path
) -> list[str]:
    """The h2load command that loads ``target`` with ``clients`` requests in flight for
    ``seconds`` after ``warm`` seconds of warm-up, over ``protocol`` (``kserve_json`` or
    ``kserve_grpc``); ``body`` is where the request body is written."""
    url, extra = h2load_request({"grpc": target.grpc, "rest": target.rest}, protocol, body)
    if protocol == "kserve_grpc":
        # One connection, ``clients`` streams: as a grpc client's channel carries its calls.
        shape = ["--clients=1", f"--max-concurrent-streams={clients}"]
    else:
        shape = [f"--clients={clients}", "--max-concurrent-streams=1"]  # HTTP/1.1: one each
    return [
        "h2load",
        *shape,
        f"--duration={round(seconds * 1000)}ms",
        f"--warm-up-time={round(warm * 1000)}ms",
        f"--data={body}",
        *extra,
        url,
    ]


def _parse(out: str, seconds: float) -> dict[str, float]:
    """Requests per second and failures from h2load's summary (its measured window only)."""
    for line in out.splitlines():
        if line.startswith("requests:"):
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            fields = {part.split()[1]: int(part.split()[0]) for part in line[9:].split(",")}
            return {"rps": fields["succeeded"] / seconds, "failed": fields["failed"]}
    raise RuntimeError(f"h2load gave no summary:\n{out[-2000:]}")


def window(
    target: Target, protocol: str, clients: int, seconds: float, warm: float, tmp: Path
) -> dict[str, float]:
    """Load ``target`` alone with ``clients`` clients for ``seconds`` (after ``warm``): its
    rate, failures, p50 latency in µs (h2load's per-request log: the measured window only),
    and its front end's and workers' CPU µs per request over the window."""
    log = tmp / f"log-{target.name}-{clients}"
    log.unlink(missing_ok=True)  # h2load appends to its log file
    command = h2load_command(target, protocol, clients, seconds, warm, tmp / f"body-{target.name}")
    process = subprocess.Popen([*command, f"--log-file={log}"], stdout=subprocess.PIPE, text=True)
    time.sleep(warm)  # the CPU window follows h2load's measured window (to a few ms)
    before = _cpu(target.pid)
    time.sleep(seconds)
    after = _cpu(target.pid)
    text, _ = process.communicate(timeout=seconds + warm + 60)
    got = _parse(text, seconds)
    latencies = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line)
    if not latencies:
        raise RuntimeError(f"h2load logged no request for {target.name}:\n{text[-2000:]}")
    served = max(got["rps"] * seconds, 1.0)
    got["p50_us"] = float(statistics.median(latencies))
    got["front_us"] = (after[0] - before[0]) / served * 1e6
    got["worker_us"] = (after[1] - before[1]) / served * 1e6
    return got


def rounds(
    targets: Sequence[Target],
    protocol: str,
    count: int,
    *,
    one_seconds: float,
    many_seconds: float,
    clients: int = 64,
    warm: float = 0.25,
) -> dict[str, Any]:
    """``count`` rounds over ``targets`` (the first, A, is the reference of every comparison:
    e.g. A, B, A2): in each round every server in turn, in rotated order, for a 1-client window
    of ``one_seconds`` and then a ``clients``-client window of ``many_seconds``. Per server the
    rounds' raw figures; per other server the per-round differences against A and their
    summaries (``summarize``)."""
    raw: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="modelyard-ab-") as name:
        tmp = Path(name)
        for index in range(count):
            shift = index % len(targets)
            order = [*targets[shift:], *targets[:shift]]
            for t in order:
                one = window(t, protocol, 1, one_seconds, warm, tmp)
                many = window(t, protocol, clients, many_seconds, warm, tmp)
                raw[t.name].append({"one": one, "many": many})
            shown = ", ".join(
                f"{n} {raw[n][-1]['one']['p50_us']:.0f} µs / {raw[n][-1]['many']['rps']:.0f} req/s"
                for n in raw
            )
            print(f"{protocol} round {index}: {shown}", flush=True)
    reference = targets[0].name
    report: dict[str, Any] = {
        "protocol": protocol, "rounds": count, "one_seconds": one_seconds,
        "many_seconds": many_seconds, "clients": clients, "raw": raw,
    }  # fmt: skip
    for t in targets:
        points = raw[t.name]
        report[t.name] = {
            "p50_us": statistics.median(p["one"]["p50_us"] for p in points),
            "rps": statistics.median(p["many"]["rps"] for p in points),
            "front_us_one": statistics.median(p["one"]["front_us"] for p in points),
            "front_us_many": statistics.median(p["many"]["front_us"] for p in points),
            "worker_us_many": statistics.median(p["many"]["worker_us"] for p in points),
            "failed": sum(p["one"]["failed"] + p["many"]["failed"] for p in points),
        }
    a = raw[reference]
    for t in targets[1:]:
        b = raw[t.name]
        pairs = list(zip(a, b, strict=True))
        report[f"{reference}-{t.name}"] = {
            "p50_added_us": summarize([x["one"]["p50_us"] - y["one"]["p50_us"] for x, y in pairs]),
            "rps_change_pct": summarize(
                [100 * (x["many"]["rps"] / y["many"]["rps"] - 1) for x, y in pairs]
            ),
            "front_added_us_one": summarize(
                [x["one"]["front_us"] - y["one"]["front_us"] for x, y in pairs]
            ),
            "front_added_us_many": summarize(
                [x["many"]["front_us"] - y["many"]["front_us"] for x, y in pairs]
            ),
        }
    return report


def summarize(values: Sequence[float], resamples: int = 4000, seed: int = 16) -> dict[str, Any]:
    """The median of ``values`` with a bootstrap 95 % interval: the 2.5th and 97.5th
    percentiles of the medians of ``resamples`` resamples (with replacement, same size; a fixed
    seed, so a report can be recomputed from its raw figures)."""
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    low = medians[int(0.025 * (resamples - 1))]
    high = medians[round(0.975 * (resamples - 1))]
    return {"median": statistics.median(values), "low": low, "high": high, "values": list(values)}


def verdict(summary: dict[str, Any], goal: float, worse: str = "higher") -> str:
    """Whether ``summary``'s interval decides the goal: the cost must stay at most ``goal``
    (``worse`` is ``higher``: the values are the cost, as added µs; ``lower``: the values are a
    change in per cent and the cost is its opposite, a loss). Met when the whole interval of
    the cost is at most the goal, missed when it is wholly beyond it; otherwise (it straddles
    the goal) "not resolved". A wide interval below the goal still decides it: the cost is at
    most its upper end with 97.5 % confidence."""
    low, high = summary["low"], summary["high"]
    what = "added"
    if worse == "lower":  # the cost is the loss, -change
        low, high, what = -high, -low, "loss"
    shown = (
        f"{what} {-summary['median'] if worse == 'lower' else summary['median']:+.1f}, "
        f"95 % interval [{low:+.1f}, {high:+.1f}]"
    )
    if high <= goal:
        return f"met ({shown}: within the goal, {goal:g})"
    if low > goal:
        return f"missed ({shown}: beyond the goal, {goal:g})"
    return f"not resolved ({shown}: it straddles the goal, {goal:g})"
