"""CPU time per request, front end and workers apart: a measure that holds on a loaded machine.

Wall-clock req/s on a 2-core box shared with other work moves by 30 % between runs; the CPU
time a server process spends per request moves less, because time spent waiting for the CPU is
not counted. This starts ``modelyard serve`` (the tiny benchmark model, unbatched) once per
source tree given, sends ``--requests`` requests over each protocol with h2load (HTTP/1.1 for
REST, HTTP/2 for gRPC; a C client, so the client takes little of the CPU), one at a time
(``--streams 1``) or more, and reports the CPU microseconds per request of the front end process
and of its children (the workers) read from /proc. Trees are run interleaved, ``--rounds``
times, and the median of the rounds is shown, so two trees are compared back to back.

    python bench/request_cost.py --tree new=src --tree old=/path/to/old/src --rounds 3

A tree may carry ``serve`` flags after a comma, e.g. ``--tree grpcio=src,--grpc-server=grpcio``
to compare the gRPC port's two servers on one tree.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY, write_mlp
from protocols import GRPC_METHOD, LABELS, PROTOCOLS, http_parts, payload

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


def serve(
    tree: str, config: Path, root: Path, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
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
        *extra,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not ports_file.exists() or not ports_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"modelyard serve ({tree}) did not start")
        time.sleep(0.1)
    ports: dict[str, int] = json.loads(ports_file.read_text())
    return process, ports


def h2load_request(ports: dict[str, int], protocol: str, body: Path) -> tuple[str, list[str]]:
    """The tiny model's request over ``protocol`` for h2load: its body written to ``body`` (a
    gRPC message with its 5-byte prefix, or the HTTP body), and the URL and h2load options
    (headers; ``--h1`` for REST) to send it with."""
    request = payload(protocol, TINY.name, TINY.example())
    if protocol == "kserve_grpc":
        body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
        url = f"http://127.0.0.1:{ports['grpc']}{GRPC_METHOD}"
        return url, ["--header=content-type: application/grpc", "--header=te: trailers"]
    path, headers, data = http_parts(request)
    body.write_bytes(data)
    return f"http://127.0.0.1:{ports['rest']}{path}", ["--h1", *(f"--header={h}" for h in headers)]


def _h2load(ports: dict[str, int], protocol: str, requests: int, streams: int) -> None:
    with tempfile.TemporaryDirectory(prefix="modelyard-cost-h2-") as tmp:
        body = Path(tmp) / "body"
        url, extra = h2load_request(ports, protocol, body)
        command = [
            "h2load",
            f"--requests={requests}",
            "--clients=1",
            f"--max-concurrent-streams={streams}",
            f"--data={body}",
            *extra,
            url,
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if f"{requests} succeeded" not in out.stdout:
            raise RuntimeError(f"h2load: {out.stdout[-1500:]}{out.stderr[-1500:]}")


def measure(process: subprocess.Popen[bytes], ports: dict[str, int], protocol: str,
            requests: int, streams: int) -> dict[str, float]:  # fmt: skip
    request = payload(protocol, TINY.name, TINY.example())
    client: HttpClient | GrpcClient
    client = GrpcClient(ports["grpc"]) if protocol == "kserve_grpc" else HttpClient(ports["rest"])
    for _ in range(50):  # warm-up, and a check that the answers are OK (h2load sees statuses)
        client.call(request)
    proc = psutil.Process(process.pid)
    own0, kids0 = cpu_seconds(proc)
    began = time.perf_counter()
    _h2load(ports, protocol, requests, streams)
    elapsed = time.perf_counter() - began
    own1, kids1 = cpu_seconds(proc)
    return {
        "front_us": (own1 - own0) / requests * 1e6,
        "worker_us": (kids1 - kids0) / requests * 1e6,
        "req_s": requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="LABEL=SRC_DIR")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--streams", type=int, default=1, help="requests in flight at once")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    flags = {label: tuple(tree.split(",")[1:]) for label, tree in trees.items()}
    trees = {label: tree.split(",")[0] for label, tree in trees.items()}
    protocols = args.protocols.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-cost-") as tmp:
        root = Path(tmp)
        write_mlp(TINY, root / TINY.name / "1")
        config = root / "modelyard.yaml"
        config.write_text(f"models:\n  - {{name: tiny, base_path: {root / TINY.name}}}\n")
        for _ in range(args.rounds):
            for label, tree in trees.items():
                process, ports = serve(tree, config, root, flags[label])
                try:
                    for protocol in protocols:
                        point = measure(process, ports, protocol, args.requests, args.streams)
                        results.setdefault((label, protocol), []).append(point)
                finally:
                    process.terminate()
                    process.wait(60)
    print(f"{args.streams} request(s) in flight; CPU microseconds per request")
    print(f"{'tree':8} {'protocol':22} {'front us':>9} {'worker us':>9} {'req/s':>7}")
    for protocol in protocols:
        for label in trees:
            points = results[(label, protocol)]
            med = {k: statistics.median(p[k] for p in points) for k in points[0]}
            print(
                f"{label:8} {LABELS[protocol]:22} {med['front_us']:9.0f} {med['worker_us']:9.0f} "
                f"{med['req_s']:7.0f}"
            )


if __name__ == "__main__":
    main()
