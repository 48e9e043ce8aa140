"""A slow model cannot take what other models need: its device's execution slots, another
device's in-flight budget, or work nobody waits for any more.

The slow model is ``write_torchscript_loop``: a request's ``n`` sets how long it runs, so each
test holds a device busy for a known time (``SLOW_S``), calibrated on this machine. Real server,
real worker processes, real clients; every wait has a count and a time bound.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from modelyard.testing.models import (
    BuiltModel,
    loop_turns_per_second,
    model_config,
    write_config,
    write_onnx_linear,
    write_torchscript_loop,
)
from modelyard.testing.server import RunningServer, serving, wait_for

pytest.importorskip("torch")

SLOW_S = 2.0
"""How long one slow request runs."""
FAST_P99_S = 0.100
"""The fast model's p99 while the slow requests run (issue 12)."""


def _repository(tmp_path: Path, devices: dict[str, str]) -> tuple[Path, BuiltModel, BuiltModel]:
    """``slow`` (the loop) and ``fast`` (ONNX linear), each pinned to a device: {model: device}."""
    slow = write_torchscript_loop(tmp_path / "slow" / "1")
    fast = write_onnx_linear(tmp_path / "fast" / "1", seed=3)
    names = sorted(set(devices.values()))
    config = write_config(
        tmp_path / "modelyard.yaml",
        [
            model_config("slow", {1: slow}, devices=[devices["slow"]]),
            model_config("fast", {1: fast}, devices=[devices["fast"]]),
        ],
        devices=[{"name": d, "kind": "cpu", "memory": "2GiB"} for d in names],
    )
    return config, slow, fast


def _serve(config: Path, **kwargs: Any) -> AbstractContextManager[RunningServer]:
    """A real server whose workers follow the config's devices and pins."""
    return serving(config, **kwargs)


def _slow_body(turns: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 3.0, 4.0]},
            {"name": "n", "datatype": "INT64", "shape": [1], "data": [turns]},
        ]
    }


_CLIENT = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16))
"""One client for the slow requests and the reports: making an httpx client costs tens of ms of
CPU (and this process's GIL), which would be charged to the fast model's latency."""


def _post_slow(server: RunningServer, turns: int) -> httpx.Response:
    return _CLIENT.post(f"{server.rest_url}/v2/models/slow/infer", json=_slow_body(turns))


def _report(server: RunningServer, device: str) -> dict[str, Any]:
    url = f"{server.rest_url}/modelyard/v1/status/devices/{device}/report"
    report: dict[str, Any] = _CLIENT.get(url, timeout=10).json()
    return report


def _running(server: RunningServer, device: str) -> int:
    return int(_report(server, device)["execution_slots"]["running"])


def _start_slow(
    pool: ThreadPoolExecutor, server: RunningServer, turns: int, count: int
) -> list[Future[httpx.Response]]:
    return [pool.submit(_post_slow, server, turns) for _ in range(count)]


def _check_slow_answers(futures: list[Future[httpx.Response]]) -> None:
    for future in futures:
        answer = future.result(timeout=4 * SLOW_S + 30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], [2.0] * 4)


def test_a_fast_model_keeps_its_latency_while_four_slow_requests_run(tmp_path: Path) -> None:
    config, slow, fast = _repository(tmp_path, {"slow": "a", "fast": "a"})
    turns = int(SLOW_S * loop_turns_per_second(slow))
    x = fast.example["x"][:1]
    want = fast.reference({"x": x})["y"]
    body = {"instances": x.tolist()}
    with _serve(config) as server, httpx.Client(timeout=30) as client:
        url = f"{server.rest_url}/v1/models/fast:predict"
        for _ in range(5):  # warm: the first calls of a new session are slower
            assert client.post(url, json=body).status_code == 200
            assert _post_slow(server, 10).status_code == 200  # TorchScript optimises late
        # The server runs in this test process, which also holds torch (to build and time the
        # model): a full garbage collection of that heap stalls the server's event loop about
        # a second on a loaded box. Not the server's doing: keep what exists now out of it.
        gc.collect()
        gc.freeze()
        with ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            cap = _report(server, "a")["execution_slots"]["per_model"]
            futures = _start_slow(pool, server, turns, 4)
            # As many run as the slow model may (all slots but one, on a CPU all cores but
            # one); the others wait in the worker's queue.
            wait_for(f"{cap} slow requests running", lambda: _running(server, "a") == cap)
            latencies: list[float] = []
            end = time.monotonic() + SLOW_S / 2
            while time.monotonic() < end and len(latencies) < 400:
                sent = time.perf_counter()
                answer = client.post(url, json=body)
                latencies.append(time.perf_counter() - sent)
                assert answer.status_code == 200, answer.text
                np.testing.assert_allclose(answer.json()["predictions"], want, rtol=1e-5)
            # Every fast request above ran while the slow ones were holding their slots.
            assert not any(f.done() for f in futures)
            # A slot counts its job as running until the thread that sent the reply is back
            # under the slots' lock: the last fast one may still be counted for a moment.
            wait_for(f"{cap} slow requests still running", lambda: _running(server, "a") == cap, 5)
            _check_slow_answers(futures)
            slow_s = time.monotonic() - started
        gc.unfreeze()
    p50, p99 = np.percentile(latencies, [50, 99])
    print(
        f"\nfast model beside 4 slow requests of {SLOW_S:.0f} s (n={turns}, {cap} at once): "
        f"{len(latencies)} requests, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; the 4 slow ones took {slow_s:.1f} s"
    )
    assert len(latencies) >= 20
    assert p99 < FAST_P99_S


def test_a_client_that_disconnects_stops_its_queued_work(tmp_path: Path) -> None:
    config, slow, _ = _repository(tmp_path, {"slow": "a", "fast": "a"})
    turns = int(SLOW_S * loop_turns_per_second(slow))
    with _serve(config) as server, ThreadPoolExecutor(3) as pool:
        before = _report(server, "a")["inferences"].get("slow", {"run": 0})["run"]
        cap = _report(server, "a")["execution_slots"]["per_model"]
        futures = _start_slow(pool, server, turns, cap)  # they take all the slow model's slots
        wait_for(f"{cap} slow requests running", lambda: _running(server, "a") == cap)
        # Three REST clients give up while their requests wait for a slot...
        url = f"{server.rest_url}/v2/models/slow/infer"
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=_slow_body(turns), timeout=0.3)  # closes its connection
        # ... and a gRPC client cancels its call.
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelInfer.future(_grpc_slow_request(turns))
            time.sleep(0.3)
            assert call.cancel()
        gave_up = time.monotonic()
        wait_for(
            "4 cancelled requests withdrawn from the worker's queue",
            lambda: _report(server, "a")["inferences"]["slow"]["cancelled"] == 4,
            within_s=5,
        )
        withdrawn_s = time.monotonic() - gave_up
        _check_slow_answers(futures)
        time.sleep(0.5)  # a request that had not been withdrawn would be running by now
        counts = _report(server, "a")["inferences"]["slow"]
        slots = _report(server, "a")["execution_slots"]
    print(f"\nafter 4 clients gave up: {counts}, slots {slots}; withdrawn {withdrawn_s:.2f} s")
    assert counts["run"] - before == cap  # only the requests whose clients stayed ran
    assert counts["cancelled"] == 4
    assert slots["running"] == 0
    assert slots["queued"] == 0


def _grpc_slow_request(turns: int) -> Any:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.inputs.add(name="n", datatype="INT64", shape=[1])
    request.raw_input_contents.append(np.array([[0, 1, 3, 4]], dtype=np.float32).tobytes())
    request.raw_input_contents.append(np.array([turns], dtype=np.int64).tobytes())
    return request


def test_slow_requests_on_one_device_leave_another_devices_budget(tmp_path: Path) -> None:
    config, slow, fast = _repository(tmp_path, {"slow": "a", "fast": "b"})
    turns_per_s = loop_turns_per_second(slow)
    x = fast.example["x"][:1]
    body = {"instances": x.tolist()}
    with (
        _serve(config, max_concurrent_requests=3) as server,
        ThreadPoolExecutor(3) as pool,
        httpx.Client(timeout=30) as client,
    ):
        gc.collect()  # no full collection of this test process's heap in the middle
        gc.freeze()
        # Device a's whole budget: all three are in flight until the first one ends.
        futures = _start_slow(pool, server, int(SLOW_S * turns_per_s), 3)
        wait_for(
            "3 slow requests in device a's worker",
            lambda: (
                sum(_report(server, "a")["execution_slots"][k] for k in ("running", "queued")) == 3
            ),
        )
        refused = _post_slow(server, 10)
        url = f"{server.rest_url}/v1/models/fast:predict"
        codes: list[int] = []
        end = time.monotonic() + SLOW_S / 2
        while time.monotonic() < end and len(codes) < 20:
            codes.append(client.post(url, json=body).status_code)
        assert not any(f.done() for f in futures)  # all of it while device a was full
        _check_slow_answers(futures)
        gc.unfreeze()
    print(f"\ndevice a full: slow got {refused.status_code}; fast on b: {codes.count(200)} x 200")
    assert refused.status_code == 503
    assert "device a is serving its limit of 3 requests" in refused.json()["error"]
    assert len(codes) >= 5
    assert codes == [200] * len(codes)
