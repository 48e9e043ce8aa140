"""Triton's statistics and model configuration extensions, read by the official tritonclient
over REST and gRPC: the counts are those of the requests this test sent, batched and not."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from modelyard.testing.models import (
    loop_turns_per_second,
    model_config,
    write_config,
    write_onnx_linear,
    write_torchscript_loop,
)
from modelyard.testing.server import RunningServer, serving

BATCH = 4
SLOW_S = 0.15
"""How long each request to the slow model runs in its model's call."""
SLOW_REQUESTS = 3
PARTS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("stats")
    linear = write_onnx_linear(root / "linear" / "1")
    slow = write_torchscript_loop(root / "slow" / "1")
    (root / "batched" / "1").mkdir(parents=True)
    shutil.copy(linear.artifact, root / "batched" / "1" / linear.artifact.name)
    # A batch closes when full: 4 concurrent one-row requests are one execution of 4 rows
    # (the timeout is far longer than it takes to send them, even on a loaded machine).
    batching = {"max_batch_size": BATCH, "batch_timeout_micros": 60_000_000}
    config = write_config(
        root / "modelyard.yaml",
        [
            model_config("linear", {1: linear}),
            model_config("batched", {1: linear}, batching=batching),
            model_config("slow", {1: slow}),
        ],
    )
    with serving(config) as running:
        running.slow_turns = int(SLOW_S * loop_turns_per_second(slow))  # type: ignore[attr-defined]
        yield running


def _http(server: RunningServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.rest_url.removeprefix("http://"))


def _grpc(server: RunningServer) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.grpc_target)


def _infer_rest(server: RunningServer, model: str, rows: list[list[float]]) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}]}
    return httpx.post(f"{server.rest_url}/v2/models/{model}/infer", json=body, timeout=60)


def _stats(doc: dict[str, Any], model: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in doc["model_stats"] if s["name"] == model]
    assert len(found) == 1, doc
    return found[0]


def test_counts_match_what_was_sent_over_both_protocols(server: RunningServer) -> None:
    # Unbatched: two good requests over REST (one of 3 rows), one over gRPC, one bad.
    assert _infer_rest(server, "linear", [[1, 2, 3, 4]]).status_code == 200
    assert _infer_rest(server, "linear", [[1, 2, 3, 4]] * 3).status_code == 200
    grpc_client = _grpc(server)
    x = triton_grpc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    grpc_client.infer("linear", [x])
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert httpx.post(f"{server.rest_url}/v2/models/linear/infer", json=bad).status_code == 400
    # Batched: four concurrent one-row requests make one execution of four rows.
    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(lambda i: _infer_rest(server, "batched", [[i, 0, 0, 1]]), range(4)))
    assert [a.status_code for a in answers] == [200] * BATCH

    over_rest = _http(server).get_inference_statistics("linear", "1")
    over_grpc = grpc_client.get_inference_statistics("linear", "1", as_json=True)
    for doc in (over_rest, over_grpc):
        linear = _stats(doc, "linear")
        stats = linear["inference_stats"]
        assert linear["version"] == "1"
        assert int(stats["success"]["count"]) == 3
        assert int(stats["fail"]["count"]) == 1
        assert int(linear["inference_count"]) == 5  # rows: 1 + 3 + 1
        assert int(linear["execution_count"]) == 3
        sizes = {
            int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in linear["batch_stats"]
        }
        assert sizes == {1: 2, 3: 1}
        assert int(stats["compute_infer"]["ns"]) > 0
        assert int(stats["success"]["ns"]) >= int(stats["compute_infer"]["ns"])
        assert int(linear["last_inference"]) > 0

    every = _http(server).get_inference_statistics()  # every model
    batched = _stats(every, "batched")
    assert int(batched["inference_stats"]["success"]["count"]) == BATCH
    assert int(batched["inference_count"]) == BATCH
    assert int(batched["execution_count"]) == 1
    assert [
        (int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in batched["batch_stats"]
    ] == [(BATCH, 1)]
    # The execution's worker-measured times: once in batch_stats, and each of its requests
    # gets them in inference_stats (Triton's rule).
    (execution,) = batched["batch_stats"]
    for part in ("compute_input", "compute_infer", "compute_output"):
        once = int(execution[part]["ns"])
        assert once > 0
        assert int(batched["inference_stats"][part]["ns"]) == pytest.approx(BATCH * once, abs=8)
    # The first three waited in the queue for the fourth.
    assert int(batched["inference_stats"]["queue"]["ns"]) > 0
    assert [row["type"] for row in batched["memory_usage"]] == ["CPU"]


def _metric(text: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}",version="1"}} '
    found = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, (name, model)
    return found[0]


def test_compute_split_is_the_workers_own_measure(server: RunningServer) -> None:
    # A model whose call takes SLOW_S: compute_infer is that call as the worker timed it, not
    # the whole request; decoding and encoding the tensors are measured, non-zero and small.
    turns = server.slow_turns  # type: ignore[attr-defined]
    before = _http(server).get_inference_statistics("slow", "1")
    before_infer = int(_stats(before, "slow")["inference_stats"]["compute_infer"]["ns"])
    client = _grpc(server)
    for _ in range(SLOW_REQUESTS):
        x = triton_grpc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        n = triton_grpc.InferInput("n", [1], "INT64")
        n.set_data_from_numpy(np.array([turns], np.int64))
        client.infer("slow", [x, n])
    over_rest = _http(server).get_inference_statistics("slow", "1")
    over_grpc = client.get_inference_statistics("slow", "1", as_json=True)
    metrics = httpx.get(f"{server.rest_url}/metrics").text
    for doc in (over_rest, over_grpc):
        stats = _stats(doc, "slow")["inference_stats"]
        count = int(stats["success"]["count"])
        assert count >= SLOW_REQUESTS  # a warm-up elsewhere may have run it too
        # gRPC's JSON leaves out zeros (the queue: no batcher here).
        ns = {k: int(stats[k].get("ns", 0)) for k in PARTS}
        assert all(int(stats[k].get("count", 0)) == count for k in ns)
        infer_per_request = (ns["compute_infer"] - before_infer) / SLOW_REQUESTS
        # At least the call's length (the pace was the fastest of three timings: a margin for
        # a loaded machine where one run of the loop is quicker than the measured pace).
        assert infer_per_request >= 0.8 * SLOW_S * 1e9, ns
        # The transport to and from the worker is in the request's duration, not in compute.
        assert ns["compute_infer"] < ns["success"]
        computed = ns["queue"] + ns["compute_input"] + ns["compute_infer"] + ns["compute_output"]
        assert computed < ns["success"], ns
        for part in ("compute_input", "compute_output"):  # a few small tensors: microseconds
            assert 0 < ns[part] < 0.05 * ns["compute_infer"], (part, ns)
        for batch in _stats(doc, "slow")["batch_stats"]:
            assert int(batch["compute_input"].get("ns", 0)) > 0
            assert int(batch["compute_output"].get("ns", 0)) > 0
    # /metrics shows the same totals, in microseconds.
    stats = _stats(over_rest, "slow")["inference_stats"]
    for part in ("input", "infer", "output"):
        shown = _metric(metrics, f"nv_inference_compute_{part}_duration_us", "slow")
        assert shown == pytest.approx(int(stats[f"compute_{part}"]["ns"]) / 1000.0, rel=1e-6)


def test_model_config_shows_batching_tensors_and_devices(server: RunningServer) -> None:
    over_rest = _http(server).get_model_config("batched")
    over_grpc = _grpc(server).get_model_config("batched", as_json=True)["config"]
    for config in (over_rest, over_grpc):
        assert config["name"] == "batched"
        assert config["platform"] == "onnxruntime_onnx"
        assert int(config["max_batch_size"]) == BATCH
        # With batching, dims leave out the batch dimension, as in Triton.
        assert [
            (t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]
        ] == [("x", "TYPE_FP32", [4])]
        assert [t["name"] for t in config["output"]] == ["y"]
        assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 60_000_000
        assert [(g["name"], g["kind"]) for g in config["instance_group"]] == [("cpu", "KIND_CPU")]
    plain = _http(server).get_model_config("linear")
    assert plain["max_batch_size"] == 0
    assert plain["input"][0]["dims"] == [-1, 4]
    assert "dynamic_batching" not in plain


def test_unknown_models_are_not_found_on_both_protocols(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException, match="not served"):
        _http(server).get_inference_statistics("nope")
    with pytest.raises(InferenceServerException, match="not served"):
        _grpc(server).get_model_config("nope")
    with pytest.raises(InferenceServerException, match="no version 9"):
        _grpc(server).get_inference_statistics("linear", "9")


def test_statistics_can_be_turned_off(tmp_path: Path) -> None:
    linear = write_onnx_linear(tmp_path / "linear" / "1")
    config = write_config(tmp_path / "modelyard.yaml", [model_config("linear", {1: linear})])
    with serving(config, metrics=False) as running:
        assert _infer_rest(running, "linear", [[1, 2, 3, 4]]).status_code == 200
        answer = httpx.get(f"{running.rest_url}/v2/models/linear/stats")
        assert answer.status_code == 404
        assert "--no-metrics" in answer.json()["error"]
        assert httpx.get(f"{running.rest_url}/metrics").status_code == 404
