"""The front end's own CPU per REST request, measured in process: stable on a loaded machine.

Starts a real server (``modelyard.testing.server.serving``, the tiny benchmark model in a real
worker process) and calls its ASGI application directly on the server's event loop, one request
after another, so no socket and no load generator share the measurement. What is measured is the
CPU time of the event loop's thread (``time.thread_time``) per request: the middleware, routing,
decoding, the data plane, the worker client's framing and the encoding of the answer. Time spent
waiting for the worker, or for a CPU on a busy machine, is not counted. The lowest of
``--batches`` batches is reported (the least disturbed), with the median.

    PYTHONPATH=src python bench/frontend_cost.py            # this tree
    PYTHONPATH=/old/src python bench/frontend_cost.py       # another, for a ratio
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_models import TINY, write_mlp
from protocols import LABELS, payload

from modelyard.testing.server import serving

REST = ("tfs_rest", "kserve_json", "kserve_binary")


def _scope(request: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ")
    headers = [
        (k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.decode(),
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8501),
        "state": {},
    }
    return scope, body


async def _one(app: Any, scope: dict[str, Any], body: bytes) -> int:
    """One request through ``app`` as uvicorn would drive it; the response status."""
    done = asyncio.Event()
    status = 0
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # as uvicorn: after the response, the next receive says disconnect
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            done.set()

    await app(dict(scope), receive, send)
    return status


async def _measure(app: Any, request: bytes, batches: int, per_batch: int) -> list[float]:
    scope, body = _scope(request)
    for _ in range(100):  # warm-up
        assert await _one(app, scope, body) == 200
    costs = []
    for _ in range(batches):
        began = time.thread_time()
        for _ in range(per_batch):
            await _one(app, scope, body)
        costs.append((time.thread_time() - began) / per_batch)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--per-batch", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-fe-") as tmp:
        root = Path(tmp)
        write_mlp(TINY, root / TINY.name / "1")
        config = root / "modelyard.yaml"
        config.write_text(f"models:\n  - {{name: tiny, base_path: {root / TINY.name}}}\n")
        with serving(config) as running:
            app = running.server._http.config.app  # the app uvicorn serves
            print(f"{'protocol':22} {'min us':>7} {'median us':>9}")
            for protocol in REST:
                request = payload(protocol, TINY.name, TINY.example())
                costs = running.call(_measure(app, request, args.batches, args.per_batch), 600)
                print(
                    f"{LABELS[protocol]:22} {min(costs) * 1e6:7.0f} "
                    f"{statistics.median(costs) * 1e6:9.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
