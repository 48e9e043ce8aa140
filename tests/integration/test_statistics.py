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

from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import RunningServer, serving

BATCH = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("stats")
    linear = write_onnx_linear(root / "linear" / "1")
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
        ],
    )
    with serving(config) as running:
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
    # The first three waited in the queue for the fourth.
    assert int(batched["inference_stats"]["queue"]["ns"]) > 0
    assert [row["type"] for row in batched["memory_usage"]] == ["CPU"]


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
