"""Traces over OTLP/HTTP, received by a real OTLP/HTTP endpoint this test runs: one trace per
request, its spans (request, batcher queue, worker call), and the parent the caller sent in
W3C ``traceparent`` (an HTTP header, or gRPC metadata)."""

from __future__ import annotations

import gzip
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest

from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import RunningServer, serving

trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
pytest.importorskip("opentelemetry.sdk")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

REST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REST_PARENT = "00f067aa0ba902b7"
GRPC_TRACE = "0af7651916cd43dd8448eb211c80319c"
GRPC_PARENT = "b7ad6b7169203331"


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


class Receiver:
    """An OTLP/HTTP traces endpoint: ``POST /v1/traces`` with an ``ExportTraceServiceRequest``
    (protobuf, gzip or not), decoded with opentelemetry-proto; answers 200."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces"
                if ok:
                    receiver.add(body, self.headers.get("Content-Type", ""))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, body: bytes, content_type: str) -> None:
        assert content_type == "application/x-protobuf", content_type
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        spans = [
            Span(
                s.trace_id.hex(),
                s.span_id.hex(),
                s.parent_span_id.hex(),
                s.name,
                s.start_time_unix_nano,
                s.end_time_unix_nano,
                {a.key: _value(a.value) for a in s.attributes},
            )
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for s in scope.spans
        ]
        with self._lock:
            self.posts += 1
            self.spans.extend(spans)

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Span]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("traced")
    linear = write_onnx_linear(root / "linear" / "1")
    (root / "batched" / "1").mkdir(parents=True)
    shutil.copy(linear.artifact, root / "batched" / "1" / linear.artifact.name)
    batching = {"max_batch_size": 2, "batch_timeout_micros": 60_000_000}
    config = write_config(
        root / "modelyard.yaml",
        [
            model_config("linear", {1: linear}),
            model_config("batched", {1: linear}, batching=batching),
        ],
    )
    with serving(config, otlp_endpoint=receiver.url) as running:
        yield running


def _body(rows: int = 1) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [1.0] * 4 * rows}]
    }


def test_one_trace_per_request_parented_on_the_callers_traceparent(
    server: RunningServer, receiver: Receiver
) -> None:
    before = len(receiver.spans)
    rest = httpx.post(
        f"{server.rest_url}/v2/models/linear/infer",
        json=_body(),
        headers={"traceparent": f"00-{REST_TRACE}-{REST_PARENT}-01"},
    )
    assert rest.status_code == 200
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = service_pb2.ModelInferRequest(model_name="linear")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1.0] * 4)
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("traceparent", f"00-{GRPC_TRACE}-{GRPC_PARENT}-01"),), timeout=30
        )
    # Without a traceparent: a trace of its own.
    assert httpx.post(f"{server.rest_url}/v2/models/linear/infer", json=_body()).status_code == 200
    spans = receiver.wait_for(before + 9)[before:]
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    assert len(by_trace) == 3, spans
    for trace_id, parent_id, protocol in (
        (REST_TRACE, REST_PARENT, "kserve_rest"),
        (GRPC_TRACE, GRPC_PARENT, "kserve_grpc"),
    ):
        trace = {s.name: s for s in by_trace[trace_id]}
        assert set(trace) == {"modelyard.request", "modelyard.worker", "modelyard.compute"}
        root = trace["modelyard.request"]
        assert root.parent_id == parent_id
        assert root.attributes["modelyard.protocol"] == protocol
        assert root.attributes["modelyard.model"] == "linear"
        assert root.attributes["modelyard.version"] == "1"
        worker = trace["modelyard.worker"]
        assert worker.parent_id == root.span_id
        assert worker.attributes["modelyard.device"] == "cpu"
        assert worker.attributes["modelyard.batch_size"] == 1
        assert root.start_ns <= worker.start_ns <= worker.end_ns <= root.end_ns
        # The model's call as the worker timed it: inside the worker span, shorter than it.
        compute = trace["modelyard.compute"]
        assert compute.parent_id == worker.span_id
        assert worker.start_ns <= compute.start_ns < compute.end_ns <= worker.end_ns
        assert compute.end_ns - compute.start_ns < worker.end_ns - worker.start_ns
        assert int(compute.attributes["modelyard.compute_input_ns"]) > 0
    (own,) = [t for t in by_trace if t not in (REST_TRACE, GRPC_TRACE)]
    root = next(s for s in by_trace[own] if s.name == "modelyard.request")
    assert root.parent_id == ""


def test_a_batched_request_has_a_queue_span(server: RunningServer, receiver: Receiver) -> None:
    before = len(receiver.spans)
    traces = ["%032x" % (0xABC0 + i) for i in range(2)]

    def send(trace: str) -> int:
        return httpx.post(
            f"{server.rest_url}/v2/models/batched/infer",
            json=_body(),
            headers={"traceparent": f"00-{trace}-{REST_PARENT}-01"},
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(2) as pool:  # two one-row requests fill the batch of 2
        assert list(pool.map(send, traces)) == [200, 200]
    spans = receiver.wait_for(before + 8)[before:]
    for trace in traces:
        mine = {s.name: s for s in spans if s.trace_id == trace}
        assert set(mine) == {
            "modelyard.request",
            "modelyard.queue",
            "modelyard.worker",
            "modelyard.compute",
        }
        queue, worker = mine["modelyard.queue"], mine["modelyard.worker"]
        assert queue.parent_id == worker.parent_id == mine["modelyard.request"].span_id
        assert queue.end_ns <= worker.start_ns
        assert worker.attributes["modelyard.batch_size"] == 2
