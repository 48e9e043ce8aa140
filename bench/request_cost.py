"""CPU time per request, front end and workers apart: a measure that holds on a loaded machine.

Wall-clock req/s on a 2-core box shared with other work moves by 30 % between runs; the CPU
time a server process spends per request moves much less, because time spent waiting for the
CPU is not counted. This starts ``modelyard serve`` (the tiny benchmark model, unbatched) once
per source tree given, sends ``--requests`` requests one after another over each protocol,
and reports the CPU microseconds per request of the front end process and of its children (the
workers) read from /proc, and the p50 latency. Trees are run interleaved, ``--rounds`` times,
and the median of the rounds is shown, so two trees are compared back to back.

    python bench/request_cost.py --tree new=src --tree old=/path/to/old/src --rounds 3
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

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY, write_mlp
from protocols import GRPC_METHOD, LABELS, PROTOCOLS, payload

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(proc: psutil.Process) -> tuple[float, float]:
    """(the process's own CPU seconds, its children's), user + system."""
    own = proc.cpu_times()
    children = 0.0
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
            children += t.user + t.system
        except psutil.Error:
            pass
    return own.user + own.system, children


class HttpClient:
    """One keep-alive connection that replays a prepared HTTP/1.1 request."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def call(self, request: bytes) -> None:
        self._sock.sendall(request)
        while b"\r\n\r\n" not in self._buf:
            self._buf += self._sock.recv(65536)
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = int(head.lower().split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += self._sock.recv(65536)
        self._buf = rest[length:]


class GrpcClient:
    def __init__(self, port: int) -> None:
        import grpc

        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._call = self._channel.unary_unary(GRPC_METHOD)

    def call(self, request: bytes) -> None:
        self._call(request, timeout=30)


def serve(tree: str, config: Path, root: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports_file = root / f"ports-{os.getpid()}-{time.monotonic_ns()}.json"
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    command = [
        sys.executable,
        "-c",
        "import sys; from modelyard.cli.main import main; sys.exit(main())",
        "serve",
        str(config),
        "--port=0",
        "--rest_api_port=0",
        f"--ports-file={ports_file}",
        "--log-level=WARNING",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not ports_file.exists() or not ports_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"modelyard serve ({tree}) did not start")
        time.sleep(0.1)
    ports: dict[str, int] = json.loads(ports_file.read_text())
    return process, ports


def measure(process: subprocess.Popen[bytes], ports: dict[str, int], protocol: str,
            requests: int) -> dict[str, float]:  # fmt: skip
    request = payload(protocol, TINY.name, TINY.example())
    client: HttpClient | GrpcClient
    client = GrpcClient(ports["grpc"]) if protocol == "kserve_grpc" else HttpClient(ports["rest"])
    for _ in range(200):  # warm-up
        client.call(request)
    proc = psutil.Process(process.pid)
    own0, kids0 = cpu_seconds(proc)
    times = []
    began = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        client.call(request)
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - began
    own1, kids1 = cpu_seconds(proc)
    return {
        "front_us": (own1 - own0) / requests * 1e6,
        "worker_us": (kids1 - kids0) / requests * 1e6,
        "p50_ms": statistics.median(times) * 1000,
        "req_s": requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="LABEL=SRC_DIR")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    protocols = args.protocols.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-cost-") as tmp:
        root = Path(tmp)
        write_mlp(TINY, root / TINY.name / "1")
        config = root / "modelyard.yaml"
        config.write_text(f"models:\n  - {{name: tiny, base_path: {root / TINY.name}}}\n")
        for _ in range(args.rounds):
            for label, tree in trees.items():
                process, ports = serve(tree, config, root)
                try:
                    for protocol in protocols:
                        point = measure(process, ports, protocol, args.requests)
                        results.setdefault((label, protocol), []).append(point)
                finally:
                    process.terminate()
                    process.wait(60)
    print(f"{'tree':8} {'protocol':22} {'front us':>9} {'worker us':>9} {'p50 ms':>7} {'req/s':>7}")
    for protocol in protocols:
        for label in trees:
            points = results[(label, protocol)]
            med = {k: statistics.median(p[k] for p in points) for k in points[0]}
            print(
                f"{label:8} {LABELS[protocol]:22} {med['front_us']:9.0f} {med['worker_us']:9.0f} "
                f"{med['p50_ms']:7.3f} {med['req_s']:7.0f}"
            )


if __name__ == "__main__":
    main()
