"""One tensor codec, every protocol: the same tensors decode to the same arrays, and the same
faults give the same messages, through each protocol's own decoder and encoder.

Each protocol is driven through its public decoding function with a request built here, by
hand, in that protocol's wire format (KServe REST JSON and binary bodies, KServe gRPC typed and
raw contents, TF Serving REST rows and columns, TF Serving gRPC ``tensor_content`` and typed
``*_val`` fields), so a protocol that stopped using ``modelyard.codec`` would show here. The
same table against a running server is tests/integration/test_codec_protocols.py.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest

from modelyard.codec import encode_raw
from modelyard.errors import InvalidArgument
from modelyard.server.dataplane import InferResult
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.kserve import decode_inputs
from modelyard.server.grpc.tfcodec import array_to_tensor, tensor_to_array
from modelyard.server.http.kserve_codec import decode_request, encode_response
from modelyard.server.http.tfserving import decode_columnar, decode_instances, encode_outputs
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.tfproto.generated import tensorflow_core_pb2 as core
from modelyard.workers.protocol import Infer, Outputs, recv_message, send_message

KSERVE_NAMES = (
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
)


@dataclass(frozen=True)
class Wire:
    """One tensor ``x`` as a client writes it: a datatype name, a shape, and its values as JSON
    (nested to the shape for REST, flat for typed contents) or its raw bytes."""

    datatype: str
    shape: tuple[int, ...]
    values: Any = None
    raw: bytes | None = None

    @property
    def flat(self) -> list[Any]:
        values = self.values
        while values and isinstance(values[0], list):
            values = [v for row in values for v in row]
        return list(values)


def _le_raw(array: np.ndarray, datatype: DataType) -> bytes:
    """The raw layout, written out here from the spec (not by the codec under test)."""
    if datatype is DataType.BYTES:
        return b"".join(struct.pack("<I", len(b)) + b for b in array.ravel().tolist())
    return array.astype(datatype.numpy.newbyteorder("<")).tobytes()


def wire_of(array: np.ndarray, datatype: DataType) -> Wire:
    values = array.tolist()
    if datatype is DataType.BYTES:
        values = np.vectorize(lambda b: b.decode(), otypes=[object])(array).tolist()
    return Wire(datatype.value, array.shape, values, _le_raw(array, datatype))


# -- each protocol's decoder, fed a request built in its wire format --------------------------


def kserve_json(wire: Wire) -> np.ndarray:
    tensor = {"name": "x", "datatype": wire.datatype, "shape": list(wire.shape)}
    body = json.dumps({"inputs": [{**tensor, "data": wire.values}]}).encode()
    return decode_request(body).inputs["x"]


def kserve_binary(wire: Wire) -> np.ndarray:
    assert wire.raw is not None
    tensor = {"name": "x", "datatype": wire.datatype, "shape": list(wire.shape)}
    tensor["parameters"] = {"binary_data_size": len(wire.raw)}
    header = json.dumps({"inputs": [tensor]}).encode()
    return decode_request(header + wire.raw, len(header)).inputs["x"]


_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def kserve_grpc_typed(wire: Wire) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=wire.datatype, shape=list(wire.shape))
    flat = wire.flat
    if wire.datatype == "BYTES":
        flat = [v.encode() for v in flat]
    getattr(tensor.contents, _CONTENTS.get(wire.datatype, "fp32_contents")).extend(flat)
    return decode_inputs(request)["x"]


def kserve_grpc_raw(wire: Wire) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype=wire.datatype, shape=list(wire.shape))
    request.raw_input_contents.append(wire.raw)
    return decode_inputs(request)["x"]


def _signature(wire: Wire) -> Signature:
    spec = TensorSpec("x", DataType(wire.datatype), tuple(-1 for _ in wire.shape))
    return Signature((spec,), (TensorSpec("y", DataType.FP32, (-1,)),))


def tf_rest_instances(wire: Wire) -> np.ndarray:
    return decode_instances(wire.values, _signature(wire))["x"]


def tf_rest_inputs(wire: Wire) -> np.ndarray:
    return decode_columnar({"x": wire.values}, _signature(wire))["x"]


def _tensor_proto(wire: Wire) -> Any:
    tensor = core.TensorProto(dtype=core.DataType.Value(DataType(wire.datatype).tf_name))
    for size in wire.shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def tf_grpc_content(wire: Wire) -> np.ndarray:
    tensor = _tensor_proto(wire)
    tensor.tensor_content = wire.raw
    return tensor_to_array(tensor, "x")


_VALS = {"FP32": "float_val", "FP64": "double_val", "INT64": "int64_val", "BOOL": "bool_val"}
_VALS |= {"INT8": "int_val", "INT16": "int_val", "INT32": "int_val", "UINT8": "int_val"}
_VALS |= {"UINT16": "int_val", "UINT32": "uint32_val", "UINT64": "uint64_val"}
_VALS |= {"FP16": "half_val", "BYTES": "string_val"}


def tf_grpc_typed(wire: Wire) -> np.ndarray:
    tensor = _tensor_proto(wire)
    flat = wire.flat
    if wire.datatype == "FP16":
        flat = np.asarray(flat, np.float16).view(np.uint16).tolist()
    if wire.datatype == "BYTES":
        flat = [v.encode() for v in flat]
    getattr(tensor, _VALS[wire.datatype]).extend(flat)
    return tensor_to_array(tensor, "x")


Protocol = Callable[[Wire], np.ndarray]
PROTOCOLS: dict[str, Protocol] = {
    "kserve-json": kserve_json,
    "kserve-binary": kserve_binary,
    "kserve-grpc-typed": kserve_grpc_typed,
    "kserve-grpc-raw": kserve_grpc_raw,
    "tf-rest-instances": tf_rest_instances,
    "tf-rest-inputs": tf_rest_inputs,
    "tf-grpc-content": tf_grpc_content,
    "tf-grpc-typed": tf_grpc_typed,
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


def _sample(datatype: DataType) -> np.ndarray:
    if datatype is DataType.BYTES:
        return np.array([[b"", b"a"], ["é".encode(), b"long word"]], dtype=object)
    if datatype is DataType.BOOL:
        return np.array([[True, False], [False, True]])
    if datatype.numpy.kind == "f":
        return np.array([[0.5, -1.25], [65504.0, 0.0]], dtype=datatype.numpy)
    info = np.iinfo(datatype.numpy.name)  # the extremes are where a wrong cast would show
    return np.array([[info.min, info.max], [0, 1]], dtype=datatype.numpy)


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda d: d.value)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_good_tensor_decodes_to_the_same_array_on_every_protocol(
    protocol: str, datatype: DataType
) -> None:
    if protocol == "kserve-grpc-typed" and datatype is DataType.FP16:
        pytest.skip("KServe gRPC has no typed contents field for FP16 (raw contents only)")
    if protocol == "tf-grpc-content" and datatype is DataType.BYTES:
        pytest.skip("TensorFlow sends DT_STRING in string_val, never in tensor_content")
    expected = _sample(datatype)
    got = PROTOCOLS[protocol](wire_of(expected, datatype))
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tolist() == expected.tolist()
    # and it reaches a worker unchanged
    assert _worker_roundtrip(got).tolist() == expected.tolist()


# -- bad tensors: every protocol that can carry the fault, the same message ---------------------

X_FP32 = Wire("FP32", (2, 3), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


@dataclass(frozen=True)
class Fault:
    """A fault, the message every protocol gives for it (``{where}``: where the values were,
    which each protocol names its own way), and the wire form each protocol can send it in."""

    message: str
    wires: dict[str, Wire]
    where: dict[str, str] | None = None


FAULTS: dict[str, Fault] = {
    "a TF datatype name on KServe": Fault(
        f"input 'x' has unsupported datatype 'DT_FLOAT'; expected one of {KSERVE_NAMES}",
        {
            p: Wire("DT_FLOAT", (1,), [1.0], b"\0\0\0\0")
            for p in ("kserve-json", "kserve-binary", "kserve-grpc-typed", "kserve-grpc-raw")
        },
    ),
    "BF16, which has no numpy type": Fault(
        f"input 'x' has unsupported datatype 'BF16'; expected one of {KSERVE_NAMES}",
        {
            p: Wire("BF16", (1,), [1.0], b"\0\0")
            for p in ("kserve-json", "kserve-binary", "kserve-grpc-typed", "kserve-grpc-raw")
        },
    ),
    "fewer values than the shape": Fault(
        "input 'x' has 5 values in {where}; expected 6 for shape [2, 3]",
        {p: Wire("FP32", (2, 3), [1.0, 2, 3, 4, 5]) for p in ("kserve-json", "kserve-grpc-typed")}
        | {"tf-grpc-typed": Wire("FP32", (2, 3), [1.0, 2, 3, 4, 5])},
        where={
            "kserve-json": "its data",
            "kserve-grpc-typed": "contents.fp32_contents",
            # TF fills a tensor from one value, and says so
            "tf-grpc-typed": "float_val",
        },
    ),
    "raw bytes that disagree with the shape": Fault(
        "input 'x' has 20 bytes of raw data; expected 24 bytes for FP32 [2, 3] (6 x 4 bytes)",
        {
            p: Wire("FP32", (2, 3), raw=b"\0" * 20)
            for p in ("kserve-binary", "kserve-grpc-raw", "tf-grpc-content")
        },
    ),
    "an integer outside its type": Fault(
        "input 'x' holds 300, outside the range of INT8 [-128, 127]",
        {
            p: Wire("INT8", (2,), [1, 300])
            for p in (
                "kserve-json",
                "kserve-grpc-typed",
                "tf-rest-instances",
                "tf-rest-inputs",
                "tf-grpc-typed",
            )
        },
    ),
    "a number too large for FP16": Fault(
        "input 'x' holds a number too large for FP16 (largest 65504)",
        {
            p: Wire("FP16", (2,), [1.0, 70000.0])
            for p in ("kserve-json", "tf-rest-instances", "tf-rest-inputs")
        },
    ),
    "a string in a number tensor": Fault(
        "input 'x' has data that is not FP32: found string values; expected JSON numbers",
        {
            p: Wire("FP32", (2,), [1.0, "2"])
            for p in ("kserve-json", "tf-rest-instances", "tf-rest-inputs")
        },
    ),
    "integers in a BOOL tensor": Fault(
        "input 'x' has data that is not BOOL: found integer values; expected JSON booleans",
        {
            p: Wire("BOOL", (2,), [1, 0])
            for p in ("kserve-json", "tf-rest-instances", "tf-rest-inputs")
        },
    ),
    "a number in a BYTES tensor": Fault(
        # TF Serving also takes {"b64": ...} and its message adds that
        "input 'x' has data that is not BYTES: found integer values; expected strings",
        {
            p: Wire("BYTES", (2,), [5, "a"])
            for p in ("kserve-json", "tf-rest-instances", "tf-rest-inputs")
        },
    ),
    "ragged rows": Fault(
        "input 'x' has ragged data: lists at nesting depth 2 have lengths [1, 2]; expected a "
        "flat list or rectangular nested lists (all rows of equal length)",
        {
            p: Wire("FP32", (2, 2), [[1.0, 2.0], [3.0]])
            for p in ("kserve-json", "tf-rest-instances", "tf-rest-inputs")
        },
    ),
    "BYTES raw data that ends early": Fault(
        "input 'x' has raw BYTES data that ends after 1 elements; expected 2 elements, each a "
        "4-byte little-endian length and its bytes",
        {
            p: Wire("BYTES", (2,), raw=b"\x01\0\0\0a\0\0\0")
            for p in ("kserve-binary", "kserve-grpc-raw")
        },
    ),
    "a negative dimension": Fault(
        "input 'x' has shape [-1]; dimensions of a request must be >= 0",
        {
            p: Wire("FP32", (-1,), [], b"")
            for p in (
                "kserve-json",
                "kserve-binary",
                "kserve-grpc-typed",
                "kserve-grpc-raw",
                "tf-grpc-content",
            )
        },
    ),
}

CASES = [(fault, protocol) for fault, spec in FAULTS.items() for protocol in spec.wires]


@pytest.mark.parametrize(("fault", "protocol"), CASES)
def test_a_fault_reads_the_same_on_every_protocol(fault: str, protocol: str) -> None:
    spec = FAULTS[fault]
    with pytest.raises(InvalidArgument) as info:
        PROTOCOLS[protocol](spec.wires[protocol])
    expected = spec.message.format(where=(spec.where or {}).get(protocol, ""))
    if protocol == "tf-grpc-typed" and spec.where:
        expected = expected.replace("expected 6", "expected 6 (or 1, to fill it)")
    assert info.value.message.startswith(expected), info.value.message


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


def _split(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return items


def test_bytes_outputs_that_are_not_bytes_are_sent_as_their_text_on_every_protocol() -> None:
    a, b = socket.socketpair()
    with a, b:
        send_message(a, Outputs(1, {"y": ODD_BYTES}))
        worker = recv_message(b)
    assert isinstance(worker, Outputs)
    assert worker.tensors["y"].tolist() == ODD_EXPECTED

    body, length = encode_response("m", 1, None, {"y": ODD_BYTES}, {"y": True})
    assert length is not None
    assert _split(body[length:]) == ODD_EXPECTED
    text = ODD_BYTES[:3]
    body, _ = encode_response("m", 1, None, {"y": text}, {"y": False})
    assert orjson.loads(body)["outputs"][0]["data"] == ["5", "1.5", "é"]

    assert _split(encode_raw(ODD_BYTES, DataType.BYTES)) == ODD_EXPECTED  # KServe gRPC raw
    assert list(array_to_tensor(ODD_BYTES).string_val) == ODD_EXPECTED

    tf_json = orjson.loads(orjson.dumps(encode_outputs(InferResult("m", 1, {"y": ODD_BYTES}))))
    assert tf_json == ["5", "1.5", "é", {"b64": "/w=="}]
