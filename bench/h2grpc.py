"""gRPC load with h2load (Debian's ``nghttp2-client``): a C generator that a Python gRPC server
cannot outrun, unlike ``loadgen.py``'s grpc.aio client (about 1,800 req/s at one stream, 4,300
at most, on the 2-core box).

h2load sends the serialised request as the body of an HTTP/2 POST with the 5-byte gRPC prefix
(compressed flag 0, big-endian length) and gRPC's headers, on one connection with ``streams``
concurrent streams (what one gRPC channel does). It counts an answer by its HTTP status, and a
gRPC error also comes with status 200 (the error is in the trailers), so ``check`` sends the
same bytes with a real gRPC client first and fails the run if they are not answered OK.

Per-request times come from h2load's ``--log-file`` (start, status, microseconds to the end of
the response); the results have ``loadgen.py``'s shape, so the report treats them alike.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from protocols import GRPC_METHOD

H2LOAD = "h2load"
STREAMS = (1, 8, 64)


def available() -> bool:
    return shutil.which(H2LOAD) is not None


def check(port: int, request: bytes) -> None:
    """The request answered OK by a real gRPC client (h2load cannot see gRPC errors)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        channel.unary_unary(GRPC_METHOD)(request, timeout=30)


def run(port: int, request: bytes, seconds: float, warmup_s: float = 1.0) -> list[dict[str, Any]]:
    """Closed-loop points at ``STREAMS`` concurrent streams on one connection."""
    results = []
    with tempfile.TemporaryDirectory(prefix="modelyard-h2load-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
        for streams in STREAMS:
            log = Path(tmp) / f"log-{streams}"
            command = [
                H2LOAD,
                f"--duration={max(1, round(seconds))}",
                f"--warm-up-time={max(1, round(warmup_s))}",
                "--clients=1",
                f"--max-concurrent-streams={streams}",
                f"--data={body}",
                "--header=content-type: application/grpc",
                "--header=te: trailers",
                f"--log-file={log}",
                f"http://127.0.0.1:{port}{GRPC_METHOD}",
            ]
            out = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"h2load failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
            rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
            ok = [int(r[2]) / 1000.0 for r in rows if r[1] == "200"]
            duration = max(1, round(seconds))
            results.append(
                {
                    "mode": "closed",
                    "concurrency": streams,
                    "target_rate": 0.0,
                    "requests": len(ok),
                    "errors": len(rows) - len(ok),
                    "elapsed_s": float(duration),
                    "latencies_ms": ok,
                }
            )
    return results
