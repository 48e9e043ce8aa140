"""gRPC load with h2load (Debian's ``nghttp2-client``): a C generator that a Python gRPC server
cannot outrun, unlike ``loadgen.py``'s grpc.aio client (about 1,800 req/s at one stream, 4,300
at most, on the 2-core box).

h2load sends the serialised request as the body of an HTTP/2 POST with the 5-byte gRPC prefix
(compressed flag 0, big-endian length) and gRPC's headers, on one connection with ``streams``
concurrent streams (what one gRPC channel does). It counts an answer by its HTTP status, and a
gRPC error also comes with status 200 (the error is in the trailers), so ``check`` sends the
same bytes with a real gRPC client first and fails the run if they are not answered OK.

The TF Serving REST points are measured with it too (``run_rest``: HTTP/1.1 with ``--h1``, one
keep-alive connection per client), so a REST figure and a gRPC figure compared in the report
come from the same generator, and a 1-client p50 holds little of the generator's own time:
``loadgen.py`` is Python, and at one client its own CPU per request (some 40-60 µs, and its
wake-ups) lies on the request's path, in series with the server's.

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

from protocols import GRPC_METHOD, http_parts

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
    """Closed-loop gRPC points at ``STREAMS`` concurrent streams on one connection (what one
    gRPC channel does); ``request`` is the serialised message."""
    framed = b"\x00" + struct.pack(">I", len(request)) + request
    headers = ["content-type: application/grpc", "te: trailers"]
    url = f"http://127.0.0.1:{port}{GRPC_METHOD}"
    return _points(url, framed, headers, [], seconds, warmup_s, one_connection=True)


def run_rest(
    port: int, request: bytes, seconds: float, warmup_s: float = 1.0
) -> list[dict[str, Any]]:
    """Closed-loop HTTP/1.1 points (``--h1``) at ``STREAMS`` clients, each its own keep-alive
    connection with one request in flight (as ``loadgen.py``'s REST clients); ``request`` is
    the whole HTTP request of ``protocols.payload`` (its path, headers and body are sent)."""
    path, headers, body = http_parts(request)
    url = f"http://127.0.0.1:{port}{path}"
    return _points(url, body, headers, ["--h1"], seconds, warmup_s, one_connection=False)


def _points(
    url: str,
    body: bytes,
    headers: list[str],
    flags: list[str],
    seconds: float,
    warmup_s: float,
    *,
    one_connection: bool,
) -> list[dict[str, Any]]:
    """h2load at each of ``STREAMS`` requests in flight: on one connection (``one_connection``,
    HTTP/2 streams) or one connection per request in flight; ``loadgen.py``'s result shape."""
    results = []
    duration = max(1, round(seconds))
    with tempfile.TemporaryDirectory(prefix="modelyard-h2load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(body)
        for streams in STREAMS:
            log = Path(tmp) / f"log-{streams}"
            shape = (
                ["--clients=1", f"--max-concurrent-streams={streams}"]
                if one_connection
                else [f"--clients={streams}", "--max-concurrent-streams=1"]
            )
            command = [
                H2LOAD,
                f"--duration={duration}",
                f"--warm-up-time={max(1, round(warmup_s))}",
                *shape,
                *flags,
                f"--data={data}",
                *(f"--header={h}" for h in headers),
                f"--log-file={log}",
                url,
            ]
            out = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"h2load failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
            rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
            ok = [int(r[2]) / 1000.0 for r in rows if r[1] == "200"]
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
