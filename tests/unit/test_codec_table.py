"""One tensor codec, every protocol: the same tensors decode to the same arrays, and the same
faults give the same messages, through each protocol's own decoder and encoder.

Each protocol is driven through its public decoding function with a request that
``modelyard.testing.wire`` builds in that protocol's wire format (KServe REST JSON and binary
bodies, KServe gRPC typed and raw contents, TF Serving REST rows and columns, TF Serving gRPC
``tensor_content`` and typed ``*_val`` fields), so a protocol that stopped using
``modelyard.codec`` would show here. The
same table against a running server is tests/integration/test_codec_protocols.py.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from modelyard.codec import encode_raw
from modelyard.errors import InvalidArgument
from modelyard.server.dataplane import InferResult
from modelyard.server.grpc.kserve import decode_inputs
from modelyard.server.grpc.tfcodec import array_to_tensor, tensor_to_array
from modelyard.server.http.kserve_codec import decode_request, encode_response
from modelyard.server.http.tfserving import decode_columnar, decode_instances, encode_outputs
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.testing import wire as wires
from modelyard.testing.wire import (
    FAULTS,
    Wire,
    kserve_binary_body,
    kserve_grpc_request,
    kserve_json_body,
    sample,
    split_bytes,
    tf_rest_body,
    tf_tensor,
    wire_of,
)
from modelyard.tfproto.generated import tensorflow_core_pb2 as core
from modelyard.workers.messages import Infer, Outputs
from modelyard.workers.sockets import recv_message, send_message

# -- each protocol's decoder, fed a request built in its wire format --------------------------


def kserve_json(wire: Wire) -> np.ndarray:
    return decode_request(kserve_json_body(wire)).inputs["x"]


def kserve_binary(wire: Wire) -> np.ndarray:
    return decode_request(*kserve_binary_body(wire)).inputs["x"]


def kserve_grpc_typed(wire: Wire) -> np.ndarray:
    return decode_inputs(kserve_grpc_request(wire, raw=False))["x"]


def kserve_grpc_raw(wire: Wire) -> np.ndarray:
    return decode_inputs(kserve_grpc_request(wire, raw=True))["x"]


def _signature(wire: Wire) -> Signature:
    spec = TensorSpec("x", DataType(wire.datatype), tuple(-1 for _ in wire.shape))
    return Signature((spec,), (TensorSpec("y", DataType.FP32, (-1,)),))


def tf_rest_instances(wire: Wire) -> np.ndarray:
    return decode_instances(tf_rest_body(wire, "instances")["instances"], _signature(wire))["x"]


def tf_rest_inputs(wire: Wire) -> np.ndarray:
    return decode_columnar(tf_rest_body(wire, "inputs")["inputs"], _signature(wire))["x"]


def tf_grpc_content(wire: Wire) -> np.ndarray:
    return tensor_to_array(tf_tensor(wire, content=True), "x")


def tf_grpc_typed(wire: Wire) -> np.ndarray:
    return tensor_to_array(tf_tensor(wire, content=False), "x")


Protocol = Callable[[Wire], np.ndarray]
DECODERS: dict[str, Protocol] = {
    wires.KSERVE_JSON: kserve_json,
    wires.KSERVE_BINARY: kserve_binary,
    wires.KSERVE_GRPC_TYPED: kserve_grpc_typed,
    wires.KSERVE_GRPC_RAW: kserve_grpc_raw,
    wires.TF_REST_INSTANCES: tf_rest_instances,
    wires.TF_REST_INPUTS: tf_rest_inputs,
    wires.TF_GRPC_CONTENT: tf_grpc_content,
    wires.TF_GRPC_TYPED: tf_grpc_typed,
}


def _worker_roundtrip(array: np.ndarray) -> np.ndarray:
    """Through the worker protocol, over a real socketpair, as the front end sends a request."""
    a, b = socket.socketpair()
    with a, b:
        send_message(a, Infer(1, "m", 1, {"x": array}))
        got = recv_message(b)
    assert isinstance(got, Infer)
    return got.tensors["x"]


# -- good tensors: every protocol, the same array ---------------------------------------------


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda d: d.value)
@pytest.mark.parametrize("protocol", wires.PROTOCOLS)
def test_a_good_tensor_decodes_to_the_same_array_on_every_protocol(
    protocol: str, datatype: DataType
) -> None:
    if protocol == wires.KSERVE_GRPC_TYPED and datatype is DataType.FP16:
        pytest.skip("KServe gRPC has no typed contents field for FP16 (raw contents only)")
    if protocol == wires.TF_GRPC_CONTENT and datatype is DataType.BYTES:
        pytest.skip("TensorFlow sends DT_STRING in string_val, never in tensor_content")
    expected = sample(datatype)
    got = DECODERS[protocol](wire_of(expected, datatype))
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tolist() == expected.tolist()
    # and it reaches a worker unchanged
    assert _worker_roundtrip(got).tolist() == expected.tolist()


# -- bad tensors: every protocol that can carry the fault, the same message ---------------------

CASES = [(fault, protocol) for fault, spec in FAULTS.items() for protocol in spec.wires]


@pytest.mark.parametrize(("fault", "protocol"), CASES)
def test_a_fault_reads_the_same_on_every_protocol(fault: str, protocol: str) -> None:
    spec = FAULTS[fault]
    with pytest.raises(InvalidArgument) as info:
        DECODERS[protocol](spec.wires[protocol])
    assert info.value.message.startswith(spec.expected(protocol)), info.value.message


def test_every_fault_reaches_more_than_one_protocol() -> None:
    """The table compares protocols; a fault only one protocol can carry compares nothing."""
    assert all(len(f.wires) > 1 for f in FAULTS.values())


def test_the_tf_protocols_take_tf_names_and_refuse_kserve_ones() -> None:
    tensor = core.TensorProto(dtype=core.DT_BFLOAT16)
    tensor.tensor_shape.dim.add(size=1)
    with pytest.raises(InvalidArgument) as info:
        tensor_to_array(tensor, "x")
    assert info.value.message.startswith(
        "input 'x' has unsupported datatype 'DT_BFLOAT16'; expected one of DT_BOOL, DT_UINT8"
    )


# -- BYTES outputs: what an element that is not bytes becomes, on every protocol ----------------

ODD_BYTES = np.array([5, 1.5, "é", b"\xff"], dtype=object)
ODD_EXPECTED = [b"5", b"1.5", "é".encode(), b"\xff"]
"""As tritonclient's serialize_byte_tensor sends them: bytes as is, anything else as the UTF-8
of its str(). (The worker protocol used to send the int 5 as five NUL bytes.)"""


def test_bytes_outputs_that_are_not_bytes_are_sent_as_their_text_on_every_protocol() -> None:
    a, b = socket.socketpair()
    with a, b:
        send_message(a, Outputs(1, {"y": ODD_BYTES}))
        worker = recv_message(b)
    assert isinstance(worker, Outputs)
    assert worker.tensors["y"].tolist() == ODD_EXPECTED

    body, length = encode_response("m", 1, None, {"y": ODD_BYTES}, {"y": True})
    assert length is not None
    assert split_bytes(body[length:]) == ODD_EXPECTED
    text = ODD_BYTES[:3]
    body, _ = encode_response("m", 1, None, {"y": text}, {"y": False})
    assert orjson.loads(body)["outputs"][0]["data"] == ["5", "1.5", "é"]

    assert split_bytes(encode_raw(ODD_BYTES, DataType.BYTES)) == ODD_EXPECTED  # KServe gRPC raw
    assert list(array_to_tensor(ODD_BYTES).string_val) == ODD_EXPECTED

    tf_json = orjson.loads(orjson.dumps(encode_outputs(InferResult("m", 1, {"y": ODD_BYTES}))))
    assert tf_json == ["5", "1.5", "é", {"b64": "/w=="}]
