"""One tensor, written in every protocol's wire format, and the faults every protocol shares.

For the cross-protocol tests of ``modelyard.codec``: a ``Wire`` is a tensor ``x`` as a client
writes it (a datatype name, a shape, its values as JSON or its raw bytes), and the builders
below turn it into a KServe REST JSON or binary body, a KServe gRPC ``ModelInferRequest``
(typed or raw contents), a TF Serving REST body (rows or columns) or a TF Serving gRPC
``TensorProto``. The raw layout is written out here from the KServe v2 spec, not by the codec
under test. ``FAULTS`` lists bad tensors with the message every protocol that can carry them
must give.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.server.grpc.generated import grpc_service_pb2 as kserve_pb
from modelyard.tensors import DataType
from modelyard.tfproto.generated import tensorflow_core_pb2 as tf_core

KSERVE_NAMES = (
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
)
"""The datatype names the KServe APIs take, in the order their error message lists them."""

KSERVE_JSON = "kserve-json"
KSERVE_BINARY = "kserve-binary"
KSERVE_GRPC_TYPED = "kserve-grpc-typed"
KSERVE_GRPC_RAW = "kserve-grpc-raw"
TF_REST_INSTANCES = "tf-rest-instances"
TF_REST_INPUTS = "tf-rest-inputs"
TF_GRPC_CONTENT = "tf-grpc-content"
TF_GRPC_TYPED = "tf-grpc-typed"
PROTOCOLS = (
    KSERVE_JSON,
    KSERVE_BINARY,
    KSERVE_GRPC_TYPED,
    KSERVE_GRPC_RAW,
    TF_REST_INSTANCES,
    TF_REST_INPUTS,
    TF_GRPC_CONTENT,
    TF_GRPC_TYPED,
)


@dataclass(frozen=True)
class Wire:
    """Tensor ``x`` as a client writes it: a datatype name, a shape, and its values as JSON
    (nested to the shape; strings for BYTES) and/or its raw bytes."""

    datatype: str
    shape: tuple[int, ...]
    values: Any = None
    raw: bytes | None = None

    @property
    def flat(self) -> list[Any]:
        values = self.values
        while isinstance(values, list) and values and isinstance(values[0], list):
            values = [v for row in values for v in row]
        return list(values)


def raw_layout(array: np.ndarray, datatype: DataType) -> bytes:
    """Little-endian elements in row-major order; BYTES each a u32 length and its bytes."""
    if datatype is DataType.BYTES:
        return b"".join(struct.pack("<I", len(b)) + b for b in array.ravel().tolist())
    return array.astype(datatype.numpy.newbyteorder("<")).tobytes()


def split_bytes(raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor."""
    items, offset = [], 0
    while offset < len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + n])
        offset += 4 + n
    return items


def wire_of(array: np.ndarray, datatype: DataType) -> Wire:
    """``array`` as a client sends it, in every form."""
    values = array.tolist()
    if datatype is DataType.BYTES:
        values = np.vectorize(lambda b: b.decode(), otypes=[object])(array).tolist()
    return Wire(datatype.value, tuple(array.shape), values, raw_layout(array, datatype))


def sample(datatype: DataType) -> np.ndarray:
    """A 2 x 2 tensor of ``datatype`` holding the values a wrong cast or layout would change
    (the integer extremes, a float's largest FP16 value, an empty and a non-ASCII string)."""
    if datatype is DataType.BYTES:
        return np.array([[b"", b"a"], ["\u00e9".encode(), b"long word"]], dtype=object)
    if datatype is DataType.BOOL:
        return np.array([[True, False], [False, True]])
    if datatype.numpy.kind == "f":
        return np.array([[0.5, -1.25], [65504.0, 0.0]], dtype=datatype.numpy)
    info = np.iinfo(datatype.numpy.name)
    return np.array([[info.min, info.max], [0, 1]], dtype=datatype.numpy)


# -- KServe v2 ------------------------------------------------------------------------------


def kserve_json_body(wire: Wire, **document: Any) -> bytes:
    tensor = {"name": "x", "datatype": wire.datatype, "shape": list(wire.shape)}
    return json.dumps({**document, "inputs": [{**tensor, "data": wire.values}]}).encode()


def kserve_binary_body(wire: Wire, **document: Any) -> tuple[bytes, int]:
    """The body and its ``Inference-Header-Content-Length``."""
    assert wire.raw is not None
    tensor: dict[str, Any] = {"name": "x", "datatype": wire.datatype, "shape": list(wire.shape)}
    tensor["parameters"] = {"binary_data_size": len(wire.raw)}
    header = json.dumps({**document, "inputs": [tensor]}).encode()
    return header + wire.raw, len(header)


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


def kserve_grpc_request(wire: Wire, *, raw: bool, model: str = "m") -> Any:
    """A ``ModelInferRequest`` carrying ``x`` in raw contents or its typed contents field."""
    request = kserve_pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype=wire.datatype, shape=list(wire.shape))
    if raw:
        request.raw_input_contents.append(wire.raw)
        return request
    flat = wire.flat
    if wire.datatype == "BYTES":
        flat = [v.encode() for v in flat]
    getattr(tensor.contents, _CONTENTS.get(wire.datatype, "fp32_contents")).extend(flat)
    return request


# -- TF Serving -----------------------------------------------------------------------------


def tf_rest_body(wire: Wire, key: str) -> dict[str, Any]:
    """``{"instances": rows}`` or ``{"inputs": {"x": ...}}`` for a one-input model."""
    return {"instances": wire.values} if key == "instances" else {"inputs": {"x": wire.values}}


_VALS = {
    "FP16": "half_val",
    "FP32": "float_val",
    "FP64": "double_val",
    "INT8": "int_val",
    "INT16": "int_val",
    "INT32": "int_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "INT64": "int64_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "BOOL": "bool_val",
    "BYTES": "string_val",
}


def tf_tensor(wire: Wire, *, content: bool, out: Any | None = None) -> Any:
    """A ``TensorProto`` (``out``, filled in place, or a new one) holding ``x`` in
    ``tensor_content`` or its typed ``*_val`` field."""
    tensor = out if out is not None else tf_core.TensorProto()
    tensor.dtype = tf_core.DataType.Value(DataType(wire.datatype).tf_name)
    for size in wire.shape:
        tensor.tensor_shape.dim.add(size=size)
    if content:
        tensor.tensor_content = wire.raw
        return tensor
    flat = wire.flat
    if wire.datatype == "FP16":
        flat = np.asarray(flat, np.float16).view(np.uint16).tolist()
    if wire.datatype == "BYTES":
        flat = [v.encode() for v in flat]
    getattr(tensor, _VALS[wire.datatype]).extend(flat)
    return tensor


# -- faults every protocol that can carry them must report alike ------------------------------

_KSERVE_ALL = (KSERVE_JSON, KSERVE_BINARY, KSERVE_GRPC_TYPED, KSERVE_GRPC_RAW)
_JSON_ALL = (KSERVE_JSON, TF_REST_INSTANCES, TF_REST_INPUTS)


@dataclass(frozen=True)
class Fault:
    """A bad tensor in the form each protocol can send it, and the message they all give.

    ``{where}`` in ``message`` stands for where the values were, which each protocol names its
    own way (``where``); TF Serving's typed fields also say that one value fills a tensor.
    """

    message: str
    wires: dict[str, Wire]
    where: dict[str, str] = field(default_factory=dict)

    def expected(self, protocol: str) -> str:
        message = self.message.format(where=self.where.get(protocol, ""))
        if protocol == TF_GRPC_TYPED and self.where:
            message = message.replace("; expected 6", "; expected 6 (or 1, to fill it)")
        return message


def _each(protocols: tuple[str, ...], wire: Wire) -> dict[str, Wire]:
    return dict.fromkeys(protocols, wire)


FAULTS: dict[str, Fault] = {
    "a TF datatype name on KServe": Fault(
        f"input 'x' has unsupported datatype 'DT_FLOAT'; expected one of {KSERVE_NAMES}",
        _each(_KSERVE_ALL, Wire("DT_FLOAT", (1,), [1.0], b"\0\0\0\0")),
    ),
    "BF16, which has no numpy type": Fault(
        f"input 'x' has unsupported datatype 'BF16'; expected one of {KSERVE_NAMES}",
        _each(_KSERVE_ALL, Wire("BF16", (1,), [1.0], b"\0\0")),
    ),
    "fewer values than the shape": Fault(
        "input 'x' has 5 values in {where}; expected 6 for shape [2, 3]",
        _each((KSERVE_JSON, KSERVE_GRPC_TYPED, TF_GRPC_TYPED), Wire("FP32", (2, 3), [1.0] * 5)),
        where={
            KSERVE_JSON: "its data",
            KSERVE_GRPC_TYPED: "contents.fp32_contents",
            TF_GRPC_TYPED: "float_val",
        },
    ),
    "raw bytes that disagree with the shape": Fault(
        "input 'x' has 20 bytes of raw data; expected 24 bytes for FP32 [2, 3] (6 x 4 bytes)",
        _each(
            (KSERVE_BINARY, KSERVE_GRPC_RAW, TF_GRPC_CONTENT), Wire("FP32", (2, 3), raw=b"\0" * 20)
        ),
    ),
    "an integer outside its type": Fault(
        "input 'x' holds 300, outside the range of INT8 [-128, 127]",
        _each((*_JSON_ALL, KSERVE_GRPC_TYPED, TF_GRPC_TYPED), Wire("INT8", (2,), [1, 300])),
    ),
    "a number too large for FP16": Fault(
        "input 'x' holds a number too large for FP16 (largest 65504)",
        _each(_JSON_ALL, Wire("FP16", (2,), [1.0, 70000.0])),
    ),
    "a string in a number tensor": Fault(
        "input 'x' has data that is not FP32: found string values; expected JSON numbers",
        _each(_JSON_ALL, Wire("FP32", (2,), [1.0, "2"])),
    ),
    "integers in a BOOL tensor": Fault(
        "input 'x' has data that is not BOOL: found integer values; expected JSON booleans",
        _each(_JSON_ALL, Wire("BOOL", (2,), [1, 0])),
    ),
    "a number in a BYTES tensor": Fault(
        # TF Serving's REST API also takes {"b64": ...}; its message goes on to say so
        "input 'x' has data that is not BYTES: found integer values; expected strings",
        _each(_JSON_ALL, Wire("BYTES", (2,), [5, "a"])),
    ),
    "ragged rows": Fault(
        "input 'x' has ragged data: lists at nesting depth 2 have lengths [1, 2]; expected a "
        "flat list or rectangular nested lists (all rows of equal length)",
        _each(_JSON_ALL, Wire("FP32", (2, 2), [[1.0, 2.0], [3.0]])),
    ),
    "BYTES raw data that ends early": Fault(
        "input 'x' has raw BYTES data that ends after 1 elements; expected 2 elements, each a "
        "4-byte little-endian length and its bytes",
        _each((KSERVE_BINARY, KSERVE_GRPC_RAW), Wire("BYTES", (2,), raw=b"\x01\0\0\0a\0\0\0")),
    ),
    "a negative dimension": Fault(
        "input 'x' has shape [-1]; dimensions of a request must be >= 0",
        _each((*_KSERVE_ALL, TF_GRPC_CONTENT), Wire("FP32", (-1,), [], b"")),
    ),
}
