"""Instructions and system calls per request of the real front-end process, counting on and off.

Load-independent figures for issue 16's cost: ``modelyard serve`` (the tiny ONNX MLP,
unbatched) runs under valgrind's callgrind (``--trace-children=no``: its workers run natively,
only the front end is counted), once with the defaults (statistics and metrics on, tracing
off) and once with ``--no-metrics``, side by side. After a warm-up, per protocol, the counters
are zeroed (``callgrind_control --zero``), h2load sends exactly ``--requests`` requests at one
stream (gRPC over HTTP/2, or TF Serving REST over HTTP/1.1), and the counters are dumped
(``callgrind_control --dump``); then the same over an idle pause as long as the requests took,
so what the event loop spends idle per second is subtracted. Instructions per request:
(I(requests) - idle rate x their duration) / requests.

With ``--strace`` the same servers run natively and ``strace -c -f`` is attached to every
thread of the front end for ``--requests`` requests: system calls per request, by name.

    python bench/frontend_callgrind.py --requests 2000 [--protocols kserve_grpc,tfs_rest] \
        [--strace] [--keep DIR] [--json out.json]

``--keep DIR`` keeps the callgrind dumps (``callgrind_annotate --inclusive=yes DIR/on-...``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
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

from bench_models import TINY, write_mlp
from request_cost import h2load_request

PYTHON = sys.executable
PROTOCOLS = ("kserve_grpc", "tfs_rest")


@contextmanager
def server(root: Path, name: str, flags: list[str], wrap: list[str]) -> Iterator[dict[str, int]]:
    """``modelyard serve`` on ``root``'s config with ``flags``, its command prefixed with
    ``wrap`` (valgrind, or nothing); yields its ports and ``pid`` (the front end's)."""
    ports_file = root / f"ports-{name}.json"
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(root / "cache"), "PYTHONHASHSEED": "0"}
    env["MODELYARD_INTRA_OP_THREADS"] = "1"
    command = [*wrap, PYTHON, "-m", "modelyard", "serve", str(root / "modelyard.yaml"),
               "--port", "0", "--rest_api_port", "0", f"--ports-file={ports_file}",
               "--log-level", "WARNING", *flags]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 900
        while not ports_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve {name} did not start: {process.stderr.read()[-3000:]!r}")  # type: ignore[union-attr]
            time.sleep(0.5)
        ports: dict[str, int] = json.loads(ports_file.read_text())
        while True:
            try:
                url = f"http://127.0.0.1:{ports['rest']}/v2/models/{TINY.name}/ready"
                if httpx.get(url, timeout=60).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve {name}: the model never became ready")
            time.sleep(0.5)
        ports["pid"] = process.pid
        yield ports
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


STREAMS = 1
"""Requests in flight (``--streams``): HTTP/2 streams on one connection for gRPC, HTTP/1.1
connections for REST."""


def h2load(ports: dict[str, int], protocol: str, requests: int, tmp: Path) -> float:
    """Send exactly ``requests`` requests, ``STREAMS`` at a time, over ``protocol``; the
    seconds taken. Fails unless every one succeeded."""
    body = tmp / f"body-{protocol}-{ports['pid']}"
    url, extra = h2load_request(ports, protocol, body)
    if protocol == "kserve_grpc":
        shape = ["--clients=1", f"--max-concurrent-streams={STREAMS}"]
    else:
        shape = [f"--clients={STREAMS}", "--max-concurrent-streams=1"]
    command = ["h2load", f"--requests={requests}", *shape, f"--data={body}", *extra, url]
    start = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    took = time.monotonic() - start
    match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
    if out.returncode != 0 or match is None or int(match.group(1)) != requests:
        raise RuntimeError(f"h2load: not every request succeeded:\n{out.stdout[-2000:]}")
    return took


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _dumped(out_prefix: Path, before: set[Path]) -> int:
    """The instruction total of the newest dump of ``out_prefix`` that was not in ``before``."""
    deadline = time.monotonic() + 120
    while True:
        new = sorted(set(out_prefix.parent.glob(out_prefix.name + "*")) - before)
        for path in new:
            text = path.read_text(errors="replace")
            match = re.search(r"^summary: (\d+)", text, re.M) or re.search(
                r"^totals: (\d+)", text, re.M
            )
            if match:
                return int(match.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no callgrind dump appeared for {out_prefix}")
        time.sleep(0.5)


def measure_callgrind(
    root: Path, protocols: tuple[str, ...], requests: int, warm: int
) -> dict[str, Any]:
    """Per protocol and server (on, off): instructions over ``requests`` requests, over an idle
    pause as long, and per request net of idle."""
    outs = {name: root / "dumps" / f"{name}.out" for name in ("on", "off")}
    outs["on"].parent.mkdir(exist_ok=True)
    flags = {"on": [], "off": ["--no-metrics"]}
    report: dict[str, Any] = {}
    with ExitStack() as stack:
        valgrind = ["valgrind", "--tool=callgrind", "--trace-children=no"]
        servers = {
            name: stack.enter_context(
                server(root, name, flags[name], [*valgrind, f"--callgrind-out-file={outs[name]}"])
            )
            for name in ("on", "off")
        }
        print("both servers ready under callgrind", flush=True)
        for protocol in protocols:
            for name, ports in servers.items():
                # One after the other: each gets the CPU to itself (callgrind is single-threaded
                # per process; the order does not change instruction counts).
                h2load(ports, protocol, warm, root)
                seen = set(outs[name].parent.glob(outs[name].name + "*"))
                _control(ports["pid"], "--zero")
                took = h2load(ports, protocol, requests, root)
                _control(ports["pid"], "--dump=requests-" + protocol)
                busy = _dumped(outs[name], seen)
                seen = set(outs[name].parent.glob(outs[name].name + "*"))
                _control(ports["pid"], "--zero")
                time.sleep(took)
                _control(ports["pid"], "--dump=idle-" + protocol)
                idle = _dumped(outs[name], seen)
                per = (busy - idle) / requests
                report.setdefault(protocol, {})[name] = {
                    "instructions": busy, "idle_instructions": idle, "seconds": took,
                    "instructions_per_request": per,
                }  # fmt: skip
                print(f"{protocol} {name}: {per:,.0f} instructions per request "
                      f"({busy:,} over {requests} requests in {took:.1f} s; idle {idle:,})",
                      flush=True)  # fmt: skip
            on, off = (report[protocol][n]["instructions_per_request"] for n in ("on", "off"))
            report[protocol]["added"] = on - off
            report[protocol]["added_pct"] = 100 * (on - off) / off
    report["dumps"] = str(outs["on"].parent)
    return report


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def _strace_rows(text: str) -> dict[str, int]:
    """Calls by system call name from ``strace -c``'s table."""
    rows: dict[str, int] = {}
    for line in text.splitlines():
        match = _STRACE_ROW.match(line)
        if match and match.group(3) != "total":
            rows[match.group(3)] = int(match.group(1))
    return rows


def measure_strace(
    root: Path, protocols: tuple[str, ...], requests: int, warm: int
) -> dict[str, Any]:
    """Per protocol and server (on, off): system calls per request of the front end's threads,
    by name, with ``strace -c`` attached for ``requests`` requests at one stream."""
    report: dict[str, Any] = {}
    flags = {"on": [], "off": ["--no-metrics"]}
    with ExitStack() as stack:
        servers = {n: stack.enter_context(server(root, f"s{n}", flags[n], [])) for n in flags}
        for protocol in protocols:
            for name, ports in servers.items():
                h2load(ports, protocol, warm, root)
                tids = sorted(p.name for p in Path(f"/proc/{ports['pid']}/task").iterdir())
                tracer = subprocess.Popen(
                    ["strace", "-c", "-f", *[a for t in tids for a in ("-p", t)]],
                    stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                time.sleep(1.0)  # attached to every thread
                h2load(ports, protocol, requests, root)
                tracer.send_signal(signal.SIGINT)
                _, text = tracer.communicate(timeout=120)
                rows = _strace_rows(text)
                total = sum(rows.values())
                report.setdefault(protocol, {})[name] = {
                    "threads": len(tids),
                    "calls_per_request": total / requests,
                    "by_name_per_request": {
                        k: v / requests for k, v in sorted(rows.items(), key=lambda kv: -kv[1])
                    },
                }
                top = ", ".join(
                    f"{k} {v / requests:.2f}"
                    for k, v in sorted(rows.items(), key=lambda kv: -kv[1])[:8]
                )
                print(f"strace {protocol} {name}: {total / requests:.2f} calls per request "
                      f"({len(tids)} threads): {top}", flush=True)  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--streams", type=int, default=1, help="requests in flight")
    parser.add_argument("--strace", action="store_true", help="system calls, not instructions")
    parser.add_argument("--keep", type=Path, help="keep the work directory (callgrind dumps) here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    protocols = tuple(args.protocols.split(","))
    global STREAMS
    STREAMS = args.streams
    root = args.keep or Path(tempfile.mkdtemp(prefix="modelyard-fcg-"))
    root.mkdir(parents=True, exist_ok=True)
    write_mlp(TINY, root / TINY.name / "1")
    (root / "modelyard.yaml").write_text(
        f"models:\n  - name: {TINY.name}\n    base_path: {root / TINY.name}\n"
    )
    if args.strace:
        report = measure_strace(root, protocols, args.requests, args.warm)
    else:
        report = measure_callgrind(root, protocols, args.requests, args.warm)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
