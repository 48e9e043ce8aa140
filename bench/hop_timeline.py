"""Where one request's wall time goes, hop by hop: client -> front end -> worker -> back.

A copy of a source tree gets timestamp probes (``time.perf_counter_ns``, CLOCK_MONOTONIC, the
same clock in every process) at fixed points of the request path: the front end's HTTP entry,
data plane and worker client, the worker's reader and inference, and the reply's way back. A
``modelyard serve`` on that copy (the tiny ONNX MLP, unbatched) is sent ``--requests`` TF
Serving REST requests one at a time by a blocking client in this process, which stamps its own
send and the answer's arrival. Each process buffers its stamps and appends them to a file per
process; afterwards every request's stamps are put in path order (the first of each after the
one before) and each step's median and quartiles are printed (µs).

The probes cost about 0.2 µs each (an append to a list), 16 per request. The tree measured is
never modified; a probe whose anchor text is not found fails the run, naming it (the anchors
follow the code: update them with it).

    python bench/hop_timeline.py [--src src] [--requests 3000]

Reading it (issue 18, session 10): the steps are CPU on one core in turn, not sleeps: the
front end is preempted by the worker inside its write to it and gets the core back when the
worker has answered (``(write to worker returns)`` is longer than the worker's whole step).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY, write_mlp
from protocols import payload

ROOT = Path(__file__).resolve().parent.parent

PROBE_MODULE = '''"""Stamps (bench/hop_timeline.py): buffered, appended to a file per process."""
import atexit, os, time
_P = []
_DIR = @STAMPS@  # written in: a worker's environment is a clean one
_now = time.perf_counter_ns
def flush():
    if _DIR and _P:
        with open(os.path.join(_DIR, f"{os.getpid()}.txt"), "a") as f:
            f.write("".join(f"{t} {n}\\n" for t, n in _P))
    _P.clear()
def p(tag):
    _P.append((tag, _now()))
    if len(_P) >= 1000:
        flush()
atexit.register(flush)
'''

IMPORT = "from __future__ import annotations\n"
PROBE_IMPORT = IMPORT + "from modelyard._hop_probe import p as _pp\n"

_WRITE_TO_WORKER = (
    "            transport.writelines(encode(message))\n",  # before session 12
    "            transport.writelines(frame)\n",
    "                transport.writelines(parts)\n",  # session 12: encode_infer, corked writes
)

# (file under modelyard/ (or alternatives: the first that exists), anchor text (or alternatives:
# the first found), the stamp's tag, True: before the anchor, else after it; the stamp is
# indented as the anchor's first line, or as its next line when after a ``def``)
PROBES: list[tuple[str | tuple[str, ...], str | tuple[str, ...], str, bool]] = [
    ("server/http/entry.py",
     "            hot = self._hot\n            if hot is None or hot is not self.cycle:\n"
     "                super().on_message_complete()",
     "f1 request parsed", True),
    ("server/http/entry.py",
     "            try:\n                status, headers, answer = await lean.respond(",
     "f2 task started", True),
    ("server/dataplane.py", "        replica = entry.pick_replica()",
     "f3 decoded, data plane", True),
    ("workers/client.py", _WRITE_TO_WORKER, "f4 encoded, write to worker", True),
    ("workers/client.py", _WRITE_TO_WORKER, "(write to worker returns)", False),
    (("workers/sockets.py", "workers/protocol.py"),  # protocol.py: before session 13's split
     "            k = self._sock.recv_into(self._view[self._end :])\n",
     "w1 worker woke", True),
    ("workers/host.py", "            message = frames.read()\n", "w2 frame decoded", False),
    ("workers/host.py", "        began = _perf_ns()\n        if message.signature_name",
     "w3 model call", True),
    ("workers/host.py", "        infer_ns = _perf_ns() - began\n", "w4 model returned", False),
    ("workers/host.py", "        with self._send_lock:\n            send_frame(self._sock, frame)",
     "w5 encoded, send reply", True),
    ("workers/replies.py", "        if self._ended:\n            return\n        try:\n",
     "f5 reply read", True),
    ("workers/client.py", "        future = self._pending.get(message.request_id)\n",
     "f6 reply decoded", False),
    ("workers/client.py", "            reply = await future\n", "f7 request resumed", False),
    ("server/http/entry.py", '                transport.write_now(b"".join(content))',
     "f8 answer encoded, write to client", True),
]  # fmt: skip
ORDER = [
    "c0 client sent",
    "f1 request parsed",
    "f2 task started",
    "f3 decoded, data plane",
    "f4 encoded, write to worker",
    "w1 worker woke",
    "w2 frame decoded",
    "w3 model call",
    "w4 model returned",
    "w5 encoded, send reply",
    "f5 reply read",
    "f6 reply decoded",
    "f7 request resumed",
    "f8 answer encoded, write to client",
    "c9 client has the answer",
]
ASIDE = [("(write to worker returns)", "f4 encoded, write to worker")]


def probed_copy(src: Path, dest: Path, stamps: Path) -> Path:
    """``src`` copied to ``dest`` with the probes in, writing to ``stamps``; returns ``dest``."""
    shutil.copytree(src / "modelyard", dest / "modelyard",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    package = dest / "modelyard"
    (package / "_hop_probe.py").write_text(PROBE_MODULE.replace("@STAMPS@", repr(str(stamps))))
    patched: set[str] = set()
    for names, anchors, tag, before in PROBES:
        name = (
            names
            if isinstance(names, str)
            else next((n for n in names if (package / n).exists()), names[0])
        )
        path = package / name
        text = path.read_text()
        anchor = (
            anchors
            if isinstance(anchors, str)
            else next((a for a in anchors if a in text), anchors[0])
        )
        if text.count(anchor) != 1:
            raise SystemExit(f"probe anchor not found once in {name}: {anchor!r}")
        indent = " " * (len(anchor) - len(anchor.lstrip(" ")))
        stamp = f"{indent}_pp({tag!r})\n"
        text = text.replace(anchor, stamp + anchor if before else anchor + stamp)
        if name not in patched:
            if IMPORT not in text:
                raise SystemExit(f"{name}: no {IMPORT!r} to put the probe import after")
            text = text.replace(IMPORT, PROBE_IMPORT, 1)
            patched.add(name)
        path.write_text(text)
    return dest


def run(src: Path, requests: int, warm: int, work: Path) -> list[tuple[int, str]]:
    """Serve from ``src`` (probed), send the requests; every stamp of every process, in time
    order."""
    write_mlp(TINY, work / TINY.name / "1")
    config = work / "modelyard.yaml"
    config.write_text(f"models:\n  - name: tiny\n    base_path: {work / TINY.name}\n")
    stamps = work / "stamps"
    ports_file = work / "ports.json"
    env = {**os.environ, "PYTHONPATH": str(src), "MODELYARD_INTRA_OP_THREADS": "1",
           "PYTHONHASHSEED": "0"}  # fmt: skip
    command = [sys.executable, "-m", "modelyard", "serve", str(config), "--port=0",
               "--rest_api_port=0", f"--ports-file={ports_file}",
               "--log-level=WARNING"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    client: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 120
        while not ports_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("modelyard serve did not start")
            time.sleep(0.1)
        port = json.loads(ports_file.read_text())["rest"]
        while httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code != 200:
            time.sleep(0.1)
        request = payload("tfs_rest", "tiny", TINY.example())
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for index in range(warm + requests):
                began = time.perf_counter_ns()
                _exchange(sock, request)
                if index >= warm:
                    client.append((began, time.perf_counter_ns()))
    finally:
        server.terminate()
        server.wait(60)
    events = [(t, "c0 client sent") for t, _ in client]
    events += [(t, "c9 client has the answer") for _, t in client]
    for path in stamps.iterdir():
        for line in path.read_text().splitlines():
            tag, _, ns = line.rpartition(" ")
            events.append((int(ns), tag))
    events.sort()
    return events


def _exchange(sock: socket.socket, request: bytes) -> None:
    """Send ``request``; return once the whole answer (head and Content-Length body) is in."""
    sock.sendall(request)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection")
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and len(body) >= int(value):
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise SystemExit(f"answer {head[:40]!r}")
                    return


def steps(events: list[tuple[int, str]]) -> dict[str, list[float]]:
    """Per step of ``ORDER`` (and each ``ASIDE``), its µs for every request whose stamps were
    all found in order between its send and the next request's send."""
    times = [t for t, _ in events]
    sends = [t for t, tag in events if tag == ORDER[0]]
    out: dict[str, list[float]] = defaultdict(list)
    for begin, end in zip(sends, [*sends[1:], 1 << 62], strict=True):
        window = events[bisect.bisect_left(times, begin) : bisect.bisect_left(times, end)]
        found: dict[str, int] = {}
        at = 0
        for tag in ORDER:
            while at < len(window) and window[at][1] != tag:
                at += 1
            if at == len(window):
                break
            found[tag] = window[at][0]
        if len(found) < len(ORDER):
            continue
        for a, b in itertools.pairwise(ORDER):
            out[f"{a} -> {b}"].append((found[b] - found[a]) / 1e3)
        out["total"].append((found[ORDER[-1]] - found[ORDER[0]]) / 1e3)
        for tag, since in ASIDE:
            later = [t for t, name in window if name == tag and t >= found[since]]
            if later:
                out[f"  {since} -> {tag}"].append((later[0] - found[since]) / 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warm", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-hop-") as tmp:
        work = Path(tmp)
        (work / "stamps").mkdir()
        src = probed_copy(args.src.resolve(), work / "src", work / "stamps")
        events = run(src, args.requests, args.warm, work)
    got = steps(events)
    if not got:
        raise SystemExit("no request had every stamp: a probe is not on the path any more")
    print(f"{len(got['total'])} of {args.requests} requests with every stamp; µs per step")
    width = max(map(len, got))
    for name, values in got.items():
        q1, q2, q3 = statistics.quantiles(values, n=4)
        print(f"{name:{width}s}  median {q2:7.1f}  q1 {q1:7.1f}  q3 {q3:7.1f}")


if __name__ == "__main__":
    main()
