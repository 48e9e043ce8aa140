"""One codec, every protocol, one real server: the same tensors give the same answers, and the
same bad tensors the same error messages, over KServe REST (JSON and binary), KServe gRPC (typed
and raw contents) and TF Serving REST (rows and columns) and gRPC (``tensor_content`` and typed
fields).

The server serves ONNX identity models (``echo_<datatype>``: ``y = x``), so an answer is the
tensor as the front end decoded it, carried to a worker process and back over the worker
protocol, and encoded again. Requests are built by ``modelyard.testing.wire`` and sent with
httpx and the official generated gRPC stubs (tritonclient's, TF Serving's); responses are read
here from each protocol's spec. The fault table is ``modelyard.testing.wire.FAULTS``; TF
Serving REST rows of a BYTES fault are left out here (no test model takes strings: ONNX Runtime
models refuse them) and run in tests/unit/test_codec_table.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from modelyard.tensors import DataType
from modelyard.testing import wire as wires
from modelyard.testing.models import ONNX_IR_VERSION, ONNX_OPSET, write_config
from modelyard.testing.server import RunningServer, serving
from modelyard.testing.wire import (
    FAULTS,
    Fault,
    Wire,
    kserve_binary_body,
    kserve_grpc_request,
    kserve_json_body,
    sample,
    tf_rest_body,
    tf_tensor,
    wire_of,
)
from modelyard.tfproto.generated import tensorflow_core_pb2 as tf_core
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as tf_apis
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2_grpc as tf_apis_grpc

service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
onnx = pytest.importorskip("onnx")

ECHOED = (
    DataType.FP32,
    DataType.FP16,
    DataType.INT8,
    DataType.INT64,
    DataType.UINT8,
    DataType.BOOL,
)
"""The datatypes with an echo model (ONNX Runtime serves every numeric type and BOOL)."""


def _echo_model(directory: Path, datatype: DataType) -> None:
    from onnx import TensorProto, helper

    elem = {
        DataType.FP32: TensorProto.FLOAT,
        DataType.FP16: TensorProto.FLOAT16,
        DataType.INT8: TensorProto.INT8,
        DataType.INT64: TensorProto.INT64,
        DataType.UINT8: TensorProto.UINT8,
        DataType.BOOL: TensorProto.BOOL,
    }[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"echo_{datatype.value}",
        [helper.make_tensor_value_info("x", elem, ["rows", "columns"])],
        [helper.make_tensor_value_info("y", elem, ["rows", "columns"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION
    )
    version_dir = directory / _model(datatype.value) / "1"
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))


def _model(datatype: str) -> str:
    return f"echo_{datatype.lower()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("echo")
    for datatype in ECHOED:
        _echo_model(root, datatype)
    entries = [
        {"name": _model(d.value), "base_path": _model(d.value), "platform": "onnx"} for d in ECHOED
    ]
    with serving(write_config(root / "modelyard.yaml", entries)) as running:
        yield running


class Refused(Exception):
    """A protocol's refusal: its status (HTTP code or gRPC status name) and message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class Client:
    """Sends tensor ``x`` to an echo model over each protocol; returns output ``y`` as the
    protocol's answer carries it, or raises Refused."""

    def __init__(self, server: RunningServer) -> None:
        self.http = httpx.Client(base_url=server.rest_url, timeout=30)
        self.channel = grpc.insecure_channel(server.grpc_target)
        self.kserve = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.tf = tf_apis_grpc.PredictionServiceStub(self.channel)

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def send(self, protocol: str, model: str, wire: Wire) -> np.ndarray:
        if protocol == wires.KSERVE_JSON:
            return self._kserve_rest(model, kserve_json_body(wire), None)
        if protocol == wires.KSERVE_BINARY:
            body, length = kserve_binary_body(wire, parameters={"binary_data_output": True})
            return self._kserve_rest(model, body, length)
        if protocol in (wires.KSERVE_GRPC_TYPED, wires.KSERVE_GRPC_RAW):
            request = kserve_grpc_request(wire, raw=protocol == wires.KSERVE_GRPC_RAW, model=model)
            response = self._grpc(self.kserve.ModelInfer, request)
            out = response.outputs[0]
            raw = response.raw_output_contents[0]
            return _from_raw(raw, DataType(out.datatype), tuple(out.shape))
        if protocol in (wires.TF_REST_INSTANCES, wires.TF_REST_INPUTS):
            key = "instances" if protocol == wires.TF_REST_INSTANCES else "inputs"
            reply = self.http.post(f"/v1/models/{model}:predict", json=tf_rest_body(wire, key))
            _check_http(reply)
            values = reply.json()["predictions" if key == "instances" else "outputs"]
            return np.array(values, dtype=DataType(wire.datatype).numpy)
        request = tf_apis.PredictRequest()
        request.model_spec.name = model
        tf_tensor(wire, content=protocol == wires.TF_GRPC_CONTENT, out=request.inputs["x"])
        tensor = self._grpc(self.tf.Predict, request).outputs["y"]
        tf_name = tf_core.DataType.Name(tensor.dtype)
        datatype = next(d for d in DataType if d.tf_name == tf_name)
        shape = tuple(d.size for d in tensor.tensor_shape.dim)
        return _from_raw(tensor.tensor_content, datatype, shape)

    def _kserve_rest(self, model: str, body: bytes, length: int | None) -> np.ndarray:
        headers = {"Content-Type": "application/json"}
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(length)
        reply = self.http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        _check_http(reply)
        header_length = reply.headers.get("Inference-Header-Content-Length")
        split = int(header_length) if header_length is not None else len(reply.content)
        out = json.loads(reply.content[:split])["outputs"][0]
        datatype, shape = DataType(out["datatype"]), tuple(out["shape"])
        if "data" in out:
            return np.array(out["data"], dtype=datatype.numpy).reshape(shape)
        assert out["parameters"]["binary_data_size"] == len(reply.content) - split
        return _from_raw(reply.content[split:], datatype, shape)

    @staticmethod
    def _grpc(method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=30)
        except grpc.RpcError as exc:
            raise Refused(exc.code().name, exc.details() or "") from None


def _check_http(reply: httpx.Response) -> None:
    if reply.status_code != 200:
        raise Refused(str(reply.status_code), reply.json()["error"])


def _from_raw(raw: bytes, datatype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    """The raw layout read from the KServe v2 spec: little-endian, row-major."""
    little = np.frombuffer(raw, dtype=datatype.numpy.newbyteorder("<"))
    return little.astype(datatype.numpy).reshape(shape)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    client = Client(server)
    yield client
    client.close()


# -- good tensors -----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ECHOED, ids=lambda d: d.value)
def test_a_good_tensor_comes_back_the_same_over_every_protocol(
    client: Client, datatype: DataType
) -> None:
    expected = sample(datatype)
    answers: dict[str, np.ndarray] = {}
    for protocol in wires.PROTOCOLS:
        if protocol == wires.KSERVE_GRPC_TYPED and datatype is DataType.FP16:
            continue  # KServe gRPC has no typed field for FP16: raw contents only
        answers[protocol] = client.send(
            protocol, _model(datatype.value), wire_of(expected, datatype)
        )
    for protocol, got in answers.items():
        assert (protocol, got.dtype, got.shape) == (protocol, expected.dtype, expected.shape)
        assert got.tolist() == expected.tolist(), protocol


# -- bad tensors ------------------------------------------------------------------------------

SERVER_FAULTS: dict[str, Fault] = {
    # Checked by the data plane against the model's signature, after every codec is done.
    "a datatype the model does not take": Fault(
        "input 'x' has datatype FP64; expected x: FP32 [?, ?]",
        dict.fromkeys(
            (
                wires.KSERVE_JSON,
                wires.KSERVE_BINARY,
                wires.KSERVE_GRPC_TYPED,
                wires.KSERVE_GRPC_RAW,
                wires.TF_GRPC_CONTENT,
                wires.TF_GRPC_TYPED,
            ),
            wire_of(np.ones((1, 2), np.float64), DataType.FP64),
        ),
    ),
    "a shape the model does not take": Fault(
        "input 'x' has shape [2]; expected x: FP32 [?, ?]",
        dict.fromkeys(wires.PROTOCOLS, wire_of(np.ones(2, np.float32), DataType.FP32)),
    ),
}

_ECHO_FOR = {"INT8": "int8", "FP16": "fp16", "BOOL": "bool"}
CASES = [
    (fault, protocol)
    for fault, spec in {**FAULTS, **SERVER_FAULTS}.items()
    for protocol, wire in spec.wires.items()
    if not (
        wire.datatype == "BYTES" and protocol in (wires.TF_REST_INSTANCES, wires.TF_REST_INPUTS)
    )
]


@pytest.mark.parametrize(("fault", "protocol"), CASES)
def test_a_bad_tensor_is_refused_with_the_same_message_over_every_protocol(
    client: Client, fault: str, protocol: str
) -> None:
    spec = {**FAULTS, **SERVER_FAULTS}[fault]
    wire = spec.wires[protocol]
    model = _model(_ECHO_FOR.get(wire.datatype, "fp32"))
    with pytest.raises(Refused) as info:
        client.send(protocol, model, wire)
    grpc_protocol = "grpc" in protocol
    assert info.value.status == ("INVALID_ARGUMENT" if grpc_protocol else "400")
    assert info.value.message.startswith(spec.expected(protocol)), info.value.message
