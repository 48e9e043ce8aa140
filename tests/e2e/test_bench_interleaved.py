"""The observability-cost benchmark's load process (``bench/interleaved.py``) against a real
server: its raw HTTP/2 gRPC connection and its HTTP/1.1 connections are answered, every request
it says it sent is one the server counted, and refusals are seen, not timed as answers.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.testing.server import RunningServer, serving

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's own modules, as it runs them
_models = importlib.import_module("bench_models")
_load = importlib.import_module("interleaved")
TINY = _models.TINY


def _config(tmp_path: Path, name: str) -> Path:
    _models.write_mlp(TINY, tmp_path / "m" / "1")
    config = tmp_path / "modelyard.yaml"
    config.write_text(f"models:\n  - name: {name}\n    base_path: {tmp_path / 'm'}\n")
    return config


def _targets(server: RunningServer) -> list[Any]:
    rest = int(server.rest_url.rsplit(":", 1)[1].rstrip("/"))
    grpc = int(server.grpc_target.rsplit(":", 1)[1])
    # Two names for one server: the rotation and pairing run as for two servers.
    return [_load.Target(n, rest, grpc, os.getpid()) for n in ("a", "b")]


def _served(server: RunningServer) -> int:
    stats = httpx.get(f"{server.rest_url}/v2/models/{TINY.name}/stats", timeout=30).json()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def _run(targets: list[Any], protocol: str) -> dict[str, Any]:
    got: dict[str, Any] = asyncio.run(
        asyncio.wait_for(
            _load.interleaved(
                targets, protocol, p50_rounds_count=4, block=20, rate_rounds_count=3,
                window=0.15, ramp=0.02, clients=8, progress=lambda _: None, warm=10, warm_s=0.1,
            ),
            120,
        )
    )  # fmt: skip
    return got


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol", ["kserve_grpc", "tfs_rest"])
def test_every_request_the_load_process_counts_is_one_the_server_answered(
    tmp_path: Path, protocol: str
) -> None:
    with serving(_config(tmp_path, TINY.name)) as server:
        before = _served(server)
        got = _run(_targets(server), protocol)
        sent = sum(got["warmed"].values())
        if protocol == "kserve_grpc":
            sent += 2  # the real gRPC client's check, one per target, before the run
        for part in (got["one"], got["many"]):
            assert part["errors"] == {"a": 0, "b": 0}
            sent += sum(part["answered"].values())
        # One series value per round and server, in the units the report prints.
        assert all(len(v) == 4 and min(v) > 0 for v in got["one"]["p50_us"].values())
        assert all(len(v) == 3 and min(v) > 0 for v in got["many"]["rps"].values())
        # 1-client blocks are exactly as long as asked; the server counted every request.
        assert got["one"]["answered"] == {"a": 4 * 20, "b": 4 * 20}
        assert _served(server) - before == sent


@pytest.mark.timeout(120)
def test_refused_requests_fail_the_measurement_with_what_the_server_said(tmp_path: Path) -> None:
    with (
        serving(_config(tmp_path, "another_name")) as server,
        pytest.raises(RuntimeError, match="requests failed"),
    ):
        _run(_targets(server), "tfs_rest")
