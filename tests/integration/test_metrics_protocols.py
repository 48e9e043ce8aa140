"""``/metrics`` after a known mix of good and bad requests over every protocol: each request is
counted once, under Triton's names where Triton has one, with the refusal's reason, whether it
was refused by the model's signature, by the decoder, or before any model was found."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.config.schema import Platform
from modelyard.demo.models import BuiltModel, save_onnx
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import RunningServer, serving
from modelyard.tfproto.generated import tensorflow_core_pb2 as tf_core
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as tf_apis
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2_grpc as tf_apis_grpc

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PROTOCOLS = ("tfserving_rest", "kserve_rest", "kserve_grpc", "tfserving_grpc")
GOOD = np.ones((1, 4), np.float32)
BAD = np.ones((1, 3), np.float32)  # the model takes 4 features


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("metrics")
    linear = write_onnx_linear(root / "linear" / "1")
    split = _write_rows_and_total(root / "split" / "1")
    models = [model_config("linear", {1: linear}), model_config("split", {1: split})]
    config = write_config(root / "modelyard.yaml", models)
    with serving(config) as running:
        yield running


def _write_rows_and_total(version_dir: Path) -> BuiltModel:
    """``model.onnx``: ``x`` FP32 [-1, 3] -> ``rows`` = x and ``total`` = the sum of all of x,
    a scalar: outputs without a common batch dimension, which TF Serving's row format
    (``instances``) cannot answer although the model ran."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["rows"]),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        ],
        "rows_and_total",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
    )
    return BuiltModel(
        artifact=save_onnx(graph, version_dir),
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("x", DataType.FP32, (-1, 3)),),
            (TensorSpec("rows", DataType.FP32, (-1, 3)), TensorSpec("total", DataType.FP32, ())),
        ),
        reference=lambda i: {"rows": i["x"], "total": i["x"].sum()},
        example={"x": np.ones((2, 3), np.float32)},
    )


def _samples(server: RunningServer) -> Samples:
    """Every sample by (name, labels). prometheus_client's parser adds ``_total`` to counter
    samples; Triton's counters are keyed by the name the server wrote (without it)."""
    text = httpx.get(f"{server.rest_url}/metrics").text
    return {
        (_written(s.name), tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _written(name: str) -> str:
    return name.removesuffix("_total") if name.startswith("nv_") else name


class Senders:
    """One request over a protocol: good, bad input, unknown model, or a malformed body.
    Each returns the status the protocol answered (HTTP code or gRPC status name)."""

    def __init__(self, server: RunningServer) -> None:
        self.http = httpx.Client(base_url=server.rest_url, timeout=30)
        self.channel = grpc.insecure_channel(server.grpc_target)
        self.kserve = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.tf = tf_apis_grpc.PredictionServiceStub(self.channel)

    def send(self, protocol: str, model: str, x: np.ndarray | None) -> str:
        """``x`` None: a body that does not decode."""
        if protocol == "tfserving_rest":
            url = f"/v1/models/{model}:predict"
            if x is None:
                return str(self.http.post(url, content=b"{not json").status_code)
            return str(self.http.post(url, json={"instances": x.tolist()}).status_code)
        if protocol == "kserve_rest":
            url = f"/v2/models/{model}/infer"
            if x is None:
                return str(self.http.post(url, content=b"{not json").status_code)
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                "data": x.ravel().tolist()}]}  # fmt: skip
            return str(self.http.post(url, json=body).status_code)
        if x is None:  # bytes that are no protobuf message of the method's type
            method = (
                "/inference.GRPCInferenceService/ModelInfer"
                if protocol == "kserve_grpc"
                else "/tensorflow.serving.PredictionService/Predict"
            )
            return self._rpc(lambda: self.channel.unary_unary(method)(b"\xff\xff\xff", timeout=30))
        if protocol == "kserve_grpc":
            request = service_pb2.ModelInferRequest(model_name=model)
            tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
            tensor.contents.fp32_contents.extend(x.ravel().tolist())
            return self._rpc(lambda: self.kserve.ModelInfer(request, timeout=30))
        tf_request = tf_apis.PredictRequest()
        tf_request.model_spec.name = model
        proto = tf_request.inputs["x"]
        proto.dtype = tf_core.DT_FLOAT
        proto.tensor_shape.dim.extend(tf_core.TensorShapeProto.Dim(size=s) for s in x.shape)
        proto.float_val.extend(x.ravel().tolist())
        return self._rpc(lambda: self.tf.Predict(tf_request, timeout=30))

    @staticmethod
    def _rpc(call: Callable[[], object]) -> str:
        try:
            call()
        except grpc.RpcError as exc:
            return str(exc.code().name)
        return "OK"

    def close(self) -> None:
        self.http.close()
        self.channel.close()


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_a_known_mix_over_every_protocol_is_counted_once_each(server: RunningServer) -> None:
    senders = Senders(server)
    before = _samples(server)
    answers: dict[str, list[str]] = {}
    try:
        for protocol in PROTOCOLS:
            answers[protocol] = [
                senders.send(protocol, "linear", GOOD),
                senders.send(protocol, "linear", GOOD),
                senders.send(protocol, "linear", BAD),
                senders.send(protocol, "no-such-model", GOOD),
                senders.send(protocol, "linear", None),
            ]
    finally:
        senders.close()
    after = _samples(server)
    rest = ["200", "200", "400", "404", "400"]
    rpc = ["OK", "OK", "INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT"]
    assert answers == {
        "tfserving_rest": rest, "kserve_rest": rest, "kserve_grpc": rpc, "tfserving_grpc": rpc,
    }  # fmt: skip

    version = {"model": "linear", "version": "1"}
    # Triton's names, summed over protocols: 8 good; bad input refused by the signature (4) and
    # REST bodies that did not decode (2; the path named the model) count against the version.
    assert _delta(before, after, "nv_inference_request_success", **version) == 8
    assert _delta(before, after, "nv_inference_count", **version) == 8
    assert _delta(before, after, "nv_inference_exec_count", **version) == 8
    failed = _delta(
        before, after, "nv_inference_request_failure", **version, reason="INVALID_ARGUMENT"
    )
    assert failed == 6
    assert _delta(before, after, "modelyard_request_duration_seconds_count", **version) == 8
    assert _delta(before, after, "nv_inference_request_duration_us", **version) > 0
    # Per protocol, once each.
    for protocol in PROTOCOLS:
        ok = _delta(before, after, "modelyard_inference_requests_total", **version,
                    protocol=protocol, outcome="OK")  # fmt: skip
        bad = _delta(before, after, "modelyard_inference_requests_total", **version,
                     protocol=protocol, outcome="INVALID_ARGUMENT")  # fmt: skip
        unknown = _delta(before, after, "modelyard_inference_rejected_total",
                         protocol=protocol, reason="NOT_FOUND")  # fmt: skip
        assert (protocol, ok, bad, unknown) == (protocol, 2, 2 if "rest" in protocol else 1, 1)
    # A gRPC message that does not parse names no model: refused before any was found.
    for protocol in ("kserve_grpc", "tfserving_grpc"):
        malformed = _delta(before, after, "modelyard_inference_rejected_total",
                           protocol=protocol, reason="INVALID_ARGUMENT")  # fmt: skip
        assert malformed == 1, protocol
    # A name a client made up never becomes a label value; nothing is left pending.
    assert not any("no-such-model" in str(labels) for _, labels in after)
    assert after[("nv_inference_pending_request_count", tuple(sorted(version.items())))] == 0
    assert after[("modelyard_worker_restarts_total", (("device", "cpu"),))] == 0
    assert after[("modelyard_device_measured_bytes", (("device", "cpu"),))] > 0


def test_an_answer_that_cannot_be_encoded_is_counted_once(server: RunningServer) -> None:
    """The model ran (the data plane counted a success), then the answer could not be written
    in the row format the client asked for (400): one request, counted once, as a success of
    the model, not also as a failure; the columnar form of the same request is answered."""
    version = {"model": "split", "version": "1"}
    before = _samples(server)
    with httpx.Client(base_url=server.rest_url, timeout=30) as http:
        rows = http.post("/v1/models/split:predict", json={"instances": [[1, 2, 3]]})
        columns = http.post("/v1/models/split:predict", json={"inputs": {"x": [[1, 2, 3]]}})
    after = _samples(server)
    assert rows.status_code == 400, rows.text
    assert "cannot be returned as rows" in rows.json()["error"]
    assert columns.status_code == 200
    assert columns.json()["outputs"]["total"] == 6.0  # a scalar, written as TF Serving does
    assert _delta(before, after, "nv_inference_request_success", **version) == 2
    failures = sum(
        value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if name == "nv_inference_request_failure" and ("model", "split") in labels
    )
    assert failures == 0
    counted = sum(
        value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if name == "modelyard_inference_requests_total" and ("model", "split") in labels
    )
    assert counted == 2


def test_triton_counter_names_have_no_total_suffix(server: RunningServer) -> None:
    """Triton's dashboards query ``nv_inference_request_success``, not ``..._total``."""
    text = httpx.get(f"{server.rest_url}/metrics").text
    assert "# TYPE nv_inference_request_success counter" in text
    assert "nv_inference_request_success_total" not in text


def test_the_grafana_dashboard_queries_metrics_the_server_exports(server: RunningServer) -> None:
    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    )
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert expressions
    text = httpx.get(f"{server.rest_url}/metrics").text
    exported = set()
    for family in text_string_to_metric_families(text):  # empty families too (no GPU here)
        exported |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
        exported |= {s.name for s in family.samples}
    for expr in expressions:
        used = set(re.findall(r"\b((?:nv|modelyard)_[a-z_]+)", expr))
        assert used, expr
        assert used <= exported, (expr, used - exported)
