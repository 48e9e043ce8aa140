"""Fault suite: one bad client cannot hurt the others.

A real server with real worker processes, real clients on 127.0.0.1:

* with batching on, a client whose inputs the model rejects (an id beyond an embedding table:
  only the model can tell) fails only its own requests; the good clients' requests that shared
  its batches get their correct answers;
* a large request body is decoded off the event loop: a small model's latency holds while a
  28 MB request is being decoded;
* odd requests get a clear client error: a version beyond int64, bytes that are not a protobuf.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from google.protobuf.message_factory import GetMessageClass

from modelyard.management.access import Access, rpc_access
from modelyard.server.grpc.generated import POOL as kserve_pool
from modelyard.server.http import offload
from modelyard.testing.models import (
    BuiltModel,
    model_config,
    write_config,
    write_onnx_embedding,
    write_onnx_linear,
)
from modelyard.testing.server import RunningServer, serving
from modelyard.tfproto.generated import POOL as tf_pool

VOCABULARY = 50
GOOD_CLIENTS = 4
REQUESTS_PER_CLIENT = 40
BAD_REQUESTS = 30


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, BuiltModel]]:
    root = tmp_path_factory.mktemp("bad_client")
    embedding = write_onnx_embedding(root / "embedding" / "1", vocabulary=VOCABULARY)
    linear = write_onnx_linear(root / "linear" / "1")
    bulk = write_onnx_linear(root / "bulk" / "1")
    batching = {"max_batch_size": 16, "batch_timeout_micros": 20_000}
    entries = [
        model_config("embedding", {1: embedding}, batching=batching),
        model_config("linear", {1: linear}),
        model_config("bulk", {1: bulk}),  # the large requests' model, beside the small one
    ]
    config = write_config(root / "modelyard.yaml", entries)
    return config, {"embedding": embedding, "linear": linear}


@pytest.fixture(scope="module")
def server(built: tuple[Path, dict[str, BuiltModel]]) -> Iterator[RunningServer]:
    with serving(built[0], max_request_bytes=64 * 1024 * 1024) as running:
        yield running


def predict(client: httpx.Client, server: RunningServer, model: str, **inputs: Any) -> Any:
    return client.post(
        f"{server.rest_url}/v1/models/{model}:predict",
        json={"inputs": {name: value.tolist() for name, value in inputs.items()}},
    )


# -- batching isolates bad inputs ----------------------------------------------------------


def test_one_bad_client_among_four_good_ones_fails_only_its_own_requests(
    server: RunningServer, built: tuple[Path, dict[str, BuiltModel]]
) -> None:
    reference = built[1]["embedding"].reference
    start = threading.Barrier(GOOD_CLIENTS + 1, timeout=30)

    def good_client(seed: int) -> list[tuple[np.ndarray, httpx.Response]]:
        rng = np.random.default_rng(seed)
        sent = []
        with httpx.Client(timeout=30) as client:
            start.wait()
            for _ in range(REQUESTS_PER_CLIENT):
                ids = rng.integers(-VOCABULARY, VOCABULARY, size=(int(rng.integers(1, 3)), 5))
                sent.append((ids, predict(client, server, "embedding", ids=ids)))
        return sent

    def bad_client() -> list[tuple[int, httpx.Response]]:
        rng = np.random.default_rng(99)
        sent = []
        with httpx.Client(timeout=30) as client:
            start.wait()
            for i in range(BAD_REQUESTS):
                ids = rng.integers(0, VOCABULARY, size=(1, 5))
                bad = VOCABULARY + i  # beyond the table: only the model can tell
                ids[0, i % 5] = bad
                sent.append((bad, predict(client, server, "embedding", ids=ids)))
        return sent

    with ThreadPoolExecutor(GOOD_CLIENTS + 1) as pool:
        goods = [pool.submit(good_client, seed) for seed in range(GOOD_CLIENTS)]
        bads = pool.submit(bad_client)
        good_results = [r for f in goods for r in f.result(timeout=120)]
        bad_results = bads.result(timeout=120)

    failed = [(r.status_code, r.text[:200]) for _, r in good_results if r.status_code != 200]
    assert failed == [], f"{len(failed)} of {len(good_results)} good requests failed"
    for ids, response in good_results:
        got = np.array(response.json()["outputs"], dtype=np.float32)
        np.testing.assert_array_equal(got, reference({"ids": ids})["vectors"])
    for bad, response in bad_results:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "out of data bounds" in error
        assert f"idx={bad}" in error  # its own bad id, not another request's


# -- the event loop stays responsive -------------------------------------------------------

BIG_ROWS = 350_000  # {"instances": [[4 floats] x BIG_ROWS]}: 28 MB of JSON
BIG_REQUESTS = 2
SMALL = np.ones((1, 4), dtype=np.float32)


def big_body(protocol: str) -> tuple[str, bytes]:
    """A 28 MB request for ``bulk`` in ``protocol``'s JSON: its URL path and body."""
    x = np.random.default_rng(5).standard_normal((BIG_ROWS, 4)).astype(np.float32)
    if protocol == "tfserving":
        return "/v1/models/bulk:predict", orjson.dumps({"instances": x.tolist()})
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}
    return "/v2/models/bulk/infer", orjson.dumps({"inputs": [tensor]})


def small_latencies(server: RunningServer, until: threading.Event, most: int) -> list[float]:
    """Closed-loop requests to the small model until ``until`` is set (at most ``most``)."""
    latencies: list[float] = []
    with httpx.Client(timeout=30) as client:
        predict(client, server, "linear", x=SMALL)  # connect first
        while not until.is_set() and len(latencies) < most:
            started = time.perf_counter()
            response = predict(client, server, "linear", x=SMALL)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return latencies


@pytest.mark.parametrize("protocol", ["tfserving", "kserve"])
def test_a_28_mb_request_does_not_stall_a_small_model(server: RunningServer, protocol: str) -> None:
    path, body = big_body(protocol)
    assert len(body) > 28_000_000
    url = server.rest_url + path
    with httpx.Client(timeout=60) as client:
        # Once before measuring: the decoding process starts on the first large body.
        assert client.post(url, content=body).status_code == 200

    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        timer = threading.Timer(2.0, stop.set)
        timer.start()
        before = pool.submit(small_latencies, server, stop, 3000).result(timeout=30)

    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        during = pool.submit(small_latencies, server, stop, 20_000)
        big: list[int] = []
        with httpx.Client(timeout=60) as client:
            for _ in range(BIG_REQUESTS):
                # The answer is read, not parsed: parsing 14 MB of JSON in this process would
                # hold the GIL that the server's thread needs, and measure the test, not it.
                big.append(client.post(url, content=body).status_code)
        stop.set()
        latencies = during.result(timeout=60)

    assert big == [200] * BIG_REQUESTS
    p99_before, p99_during = np.percentile(before, 99), np.percentile(latencies, 99)
    print(
        f"{protocol}: small model p99 {p99_before * 1e3:.1f} ms before ({len(before)} requests), "
        f"{p99_during * 1e3:.1f} ms during {BIG_REQUESTS} x {len(body) / 1e6:.0f} MB "
        f"({len(latencies)}), "
        f"max {max(latencies) * 1e3:.1f} ms"
    )
    assert p99_during - p99_before < 0.050


def test_a_killed_decoding_helper_is_replaced_without_failing_a_request(
    server: RunningServer,
) -> None:
    x = np.random.default_rng(8).standard_normal((20_000, 4)).astype(np.float32)
    body = orjson.dumps({"instances": x.tolist()})
    assert len(body) > offload.OFF_LOOP_BYTES
    url = server.rest_url + "/v1/models/bulk:predict"
    with httpx.Client(timeout=60) as client:
        assert client.post(url, content=body).status_code == 200  # the helper is up
        helpers = offload.helper_pids()
        assert len(helpers) == offload.HELPERS
        for pid in helpers:
            os.kill(pid, signal.SIGKILL)
        response = client.post(url, content=body)
        assert response.status_code == 200, response.text
        assert np.array(response.json()["predictions"]).shape == (20_000, 2)
        assert set(offload.helper_pids()).isdisjoint(helpers)
        assert len(offload.helper_pids()) == offload.HELPERS


def test_a_bad_body_gets_the_same_400_decoded_inline_or_in_the_helper(
    server: RunningServer,
) -> None:
    def bodies(rows: int) -> dict[str, bytes]:
        ragged: list[list[float]] = [[1.0, 2.0, 3.0, 4.0]] * rows + [[1.0]]
        tensor = {"name": "x", "datatype": "FP32", "shape": [rows + 1, 4], "data": ragged}
        named = {"signature_name": "nope", "instances": ragged[:-1]}
        return {
            "/v1/models/bulk:predict": orjson.dumps({"instances": ragged}),
            "/v1/models/bulk:predict?named": orjson.dumps(named),
            "/v1/models/bulk:regress": orjson.dumps({"examples": 7, "pad": ragged}),
            "/v2/models/bulk/infer": orjson.dumps({"inputs": [tensor]}),
        }

    errors: dict[str, set[str]] = {}
    with httpx.Client(timeout=30) as client:
        for rows in (2, 40_000):
            for path, body in bodies(rows).items():
                assert (len(body) > offload.OFF_LOOP_BYTES) == (rows > 2)
                response = client.post(server.rest_url + path.split("?")[0], content=body)
                assert response.status_code == 400, (path, response.text)
                errors.setdefault(path, set()).add(response.json()["error"])
    # The same message whichever side decoded it.
    assert all(len(e) == 1 for e in errors.values()), errors
    assert errors["/v1/models/bulk:predict?named"] == {
        "serving signature 'nope' not found; this model has 'serving_default'"
    }


# -- odd requests get a clear client error -------------------------------------------------

BEYOND_INT64 = str(2**63)
GRPC_SERVICES = [
    ("inference.GRPCInferenceService", kserve_pool),
    ("tensorflow.serving.PredictionService", tf_pool),
    ("tensorflow.serving.ModelService", tf_pool),
]


def test_a_version_beyond_int64_is_refused_alike_on_every_api(server: RunningServer) -> None:
    limit = f"larger than the largest version number, {2**63 - 1} (int64)"
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    rest = [
        ("GET", f"/v1/models/linear/versions/{BEYOND_INT64}", None),
        ("GET", f"/v1/models/linear/versions/{BEYOND_INT64}/metadata", None),
        ("POST", f"/v1/models/linear/versions/{BEYOND_INT64}:predict", {"instances": [[1] * 4]}),
        ("GET", f"/v2/models/linear/versions/{BEYOND_INT64}", None),
        ("GET", f"/v2/models/linear/versions/{BEYOND_INT64}/ready", None),
        ("POST", f"/v2/models/linear/versions/{BEYOND_INT64}/infer", {"inputs": [tensor]}),
        ("GET", f"/v1/models/linear/versions/{'9' * 5000}", None),  # int() refuses 4300 digits
    ]
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        for method, path, body in rest:
            response = client.request(method, path, json=body)
            assert response.status_code == 400, (path[:60], response.text)
            assert limit in response.json()["error"], path[:60]

    kserve = kserve_pool.FindMessageTypeByName
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method, message in [
            ("ModelReady", kserve("inference.ModelReadyRequest")),
            ("ModelMetadata", kserve("inference.ModelMetadataRequest")),
            ("ModelInfer", kserve("inference.ModelInferRequest")),
        ]:
            fields = {"name" if "name" in message.fields_by_name else "model_name": "linear"}
            fields["version" if "version" in message.fields_by_name else "model_version"] = (
                BEYOND_INT64
            )
            request = GetMessageClass(message)(**fields).SerializeToString()
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert limit in raised.value.details(), method
        # TF Serving's version is an int64 on the wire: 2**63 as a varint arrives as -2**63.
        varint = bytes([0x80] * 9 + [0x01])
        version = b"\x08" + varint  # Int64Value.value
        spec = b"\x0a\x06linear" + b"\x12" + bytes([len(version)]) + version
        predict = b"\x0a" + bytes([len(spec)]) + spec
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as raised:
            call(predict, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"version {-(2**63)} is not a positive integer" in raised.value.details()


def test_bytes_that_are_not_a_protobuf_get_invalid_argument_on_every_grpc_method(
    server: RunningServer,
) -> None:
    garbage = b"\xff\xff\xff\xff not a protobuf"
    methods = [
        f"/{name}/{method.name}"
        for name, pool in GRPC_SERVICES
        for method in pool.FindServiceByName(name).methods
    ]
    assert len(methods) >= 12
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method in methods:
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(method)(garbage, timeout=30)
            if rpc_access(method) is not Access.OPEN:
                # The management gate answers first, without parsing (management is off here).
                assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
                continue
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "is not a valid protobuf message" in raised.value.details(), method
        # And the port still serves.
        ready = kserve_pool.FindMessageTypeByName("inference.ServerReadyRequest")
        answer = channel.unary_unary("/inference.GRPCInferenceService/ServerReady")(
            GetMessageClass(ready)().SerializeToString(), timeout=30
        )
        assert answer == b"\x08\x01"  # ready: true


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_disconnects_mid_body_is_not_logged_as_an_error(
    server: RunningServer,
) -> None:
    records = _Records()
    loggers = [
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    ]
    for logger in loggers:
        logger.addHandler(records)
    host, port = server.rest_url.removeprefix("http://").rsplit(":", 1)
    try:
        for path in ("/v1/models/linear:predict", "/v2/models/linear/infer"):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 100000\r\n\r\n".encode()
                    + b'{"instances": [[1, 2,'
                )
                time.sleep(0.2)  # the handler is reading the body now
            # The next request runs after the server has seen the disconnect.
            time.sleep(0.3)
            with httpx.Client(timeout=30) as client:
                assert predict(client, server, "linear", x=SMALL).status_code == 200
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    logged = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records.records]
    assert not [r for r in records.records if r.exc_info or r.levelno >= logging.ERROR], logged
