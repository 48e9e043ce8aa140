"""Requests per second at many clients, server A against server B, with a stated resolution.

The load comes from h2load (a C client: HTTP/1.1 with ``--h1`` for REST, one HTTP/2
connection of N streams for gRPC), so the client takes little of the CPU the servers share. Two
ways to load the servers, each in many short rounds:

* ``together``: every server is loaded at the same moment, one h2load each, the start order
  rotated per round. They share the machine under the same conditions, so load from other work
  falls on all of them alike; a round's ratio is their rates' ratio.
* ``alternating``: one server at a time, in rotated order, back to back; a round's ratio is the
  ratio of the rates its servers reached in turn.

Either way the figure is the median of the per-round ratios, shown with their min and max.
Besides A and B a third server, ``A2``, runs A's flags: the median ratio A/A2 is the method's
noise floor (an A/A comparison), printed next to A/B so a reader sees what it can resolve.

Each server's own CPU per request (front end, and its workers) is read from /proc over the
measured window of each round, so the same rounds say where a throughput difference comes from.
"""

from __future__ import annotations

import statistics
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from bench_models import TINY
from protocols import GRPC_METHOD, payload
from request_cost import cpu_seconds


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
    request = payload(protocol, TINY.name, TINY.example())
    if protocol == "kserve_grpc":
        body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
        url = f"http://127.0.0.1:{target.grpc}{GRPC_METHOD}"
        # One connection, ``clients`` streams: as a grpc client's channel carries its calls.
        shape = ["--clients=1", f"--max-concurrent-streams={clients}"]
        extra = ["--header=content-type: application/grpc", "--header=te: trailers"]
    else:
        head, _, data = request.partition(b"\r\n\r\n")
        body.write_bytes(data)
        lines = head.decode().split("\r\n")
        url = f"http://127.0.0.1:{target.rest}{lines[0].split(' ')[1]}"
        shape = [f"--clients={clients}", "--max-concurrent-streams=1"]  # HTTP/1.1: one each
        extra = ["--h1"] + [
            f"--header={line}"
            for line in lines[1:]
            if not line.lower().startswith(("host:", "content-length:"))
        ]
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


def _round(
    targets: list[Target], protocol: str, clients: int, seconds: float, warm: float, tmp: Path
) -> dict[str, dict[str, float]]:
    """Load ``targets`` all at once (the start order as given); each one's rate and CPU."""
    procs = {}
    for t in targets:
        command = h2load_command(t, protocol, clients, seconds, warm, tmp / f"body-{t.name}")
        procs[t.name] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(warm)  # the CPU window follows h2load's measured window (to a few ms)
    before = {t.name: _cpu(t.pid) for t in targets}
    time.sleep(seconds)
    after = {t.name: _cpu(t.pid) for t in targets}
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        text, _ = procs[t.name].communicate(timeout=seconds + warm + 60)
        got = _parse(text, seconds)
        served = max(got["rps"] * seconds, 1.0)
        got["front_us"] = (after[t.name][0] - before[t.name][0]) / served * 1e6
        got["worker_us"] = (after[t.name][1] - before[t.name][1]) / served * 1e6
        out[t.name] = got
    return out


def compare(
    targets: list[Target],
    protocol: str,
    mode: str,
    rounds: int,
    seconds: float,
    clients: int = 64,
    warm: float = 0.3,
) -> dict[str, Any]:
    """``rounds`` rounds over ``targets`` (the first is the reference of every ratio, e.g.
    A, B, A2), loaded ``together`` or ``alternating``; per-round rates, CPU and ratios."""
    raw: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    with tempfile.TemporaryDirectory(prefix="modelyard-ab-") as name:
        tmp = Path(name)
        for index in range(rounds):
            shift = index % len(targets)
            order = targets[shift:] + targets[:shift]
            if mode == "together":
                got = _round(order, protocol, clients, seconds, warm, tmp)
            else:
                got = {}
                for t in order:
                    got.update(_round([t], protocol, clients, seconds, warm, tmp))
            for t in targets:
                raw[t.name].append(got[t.name])
            rates = ", ".join(f"{n} {got[n]['rps']:.0f} req/s" for n in raw)
            print(f"{protocol} {mode} round {index}: {rates}", flush=True)
    first = targets[0].name
    summary: dict[str, Any] = {
        "protocol": protocol, "mode": mode, "rounds": rounds, "seconds": seconds,
        "clients": clients, "raw": raw,
    }  # fmt: skip
    for t in targets[1:]:
        ratios = [a["rps"] / b["rps"] for a, b in zip(raw[first], raw[t.name], strict=True)]
        summary[f"{first}/{t.name}"] = {
            "ratios": ratios,
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        }
    for t in targets:
        points = raw[t.name]
        summary[t.name] = {
            k: statistics.median(p[k] for p in points) for k in ("rps", "front_us", "worker_us")
        } | {"failed": sum(p["failed"] for p in points)}
    return summary
