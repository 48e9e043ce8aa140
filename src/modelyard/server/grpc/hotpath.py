"""The inference calls' tensors in and answers out, the short way: what the KServe and TF Serving
gRPC adapters spend on every call, measured (``bench/findings.md``, "gRPC handler path").

Why it exists: with protobuf's upb runtime, parsing a request costs about 2 µs but every field
read afterwards builds a Python object (``tuple(tensor.shape)`` about 1.5 µs, ``outputs.add``
about 3 µs), and the general codec checks every shape and dtype the slow, general way. Here:

- ``raw_array``: the array a tensor's raw bytes hold, for the common case only (a numeric
  datatype, every dimension positive, the byte count right, the buffer aligned); ``None`` for
  anything else, so the caller falls back to ``codec.decode_raw``, whose errors and results stay
  the only ones a client ever sees.
- ``datatype_of``: ``DataType.from_numpy`` remembered per native dtype.
- ``model_infer_response`` and ``predict_response``: the answers serialised by hand (a handful of
  length-delimited fields), as ``Encoded`` bytes. They parse as the messages protobuf would have
  built (``tests/unit/server/grpc/test_hotpath.py`` compares them field by field).

``Encoded`` is ``bytes`` that a method's response serialiser passes through unchanged (the fast
server checks for it; ``server.py`` wraps every method's serialiser for grpc.aio's), with
``ByteSize`` for whoever measures answers (the access log).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from modelyard import codec
from modelyard.tensors import MAX_REQUEST_RANK, MAX_REQUEST_SPAN, DataType
from modelyard.tfproto.generated import tensorflow_core_pb2 as core


class Encoded(bytes):
    """A response message already serialised."""

    __slots__ = ()

    def ByteSize(self) -> int:  # protobuf's name: the access log reads it
        return len(self)

    def SerializeToString(self) -> bytes:  # protobuf's name
        return self


def serializer_passing_encoded(serialize: Any) -> Any:
    """``serialize`` (a method's response serialiser) that sends ``Encoded`` answers as they
    are."""

    def serialize_or_pass(response: Any) -> bytes:
        if type(response) is Encoded:
            return response
        return serialize(response)  # type: ignore[no-any-return]

    return serialize_or_pass


# -- tensors in -----------------------------------------------------------------------------

_LITTLE_HOST = sys.byteorder == "little"  # native numpy dtypes are the raw layout's


def _layout(datatype: DataType) -> tuple[DataType, np.dtype[Any] | None]:
    native = _LITTLE_HOST and datatype is not DataType.BYTES
    return datatype, datatype.numpy if native else None


KSERVE_LAYOUTS: dict[str, tuple[DataType, np.dtype[Any] | None]] = {
    d.value: _layout(d) for d in DataType
}
"""Each KServe datatype name (as ``codec.kserve_datatype`` takes them; it words the errors): its
DataType and the numpy dtype ``raw_array`` reads it as (None: BYTES, or a big-endian host).
Looked up by name: an enum member's hash is a Python call."""

TF_LAYOUTS: dict[int, tuple[DataType, np.dtype[Any] | None]] = {
    core.DataType.Value(d.tf_name): _layout(d) for d in DataType
}
"""The same for each ``tensorflow.DataType`` number."""


def raw_array(data: bytes, dtype: np.dtype[Any] | None, shape: Sequence[int]) -> np.ndarray | None:
    """The array ``data`` holds as ``dtype`` (a layout's) of ``shape``, a view as
    ``codec.decode_raw`` gives; or None when this is not the common case: no dtype (BYTES), a
    dimension not positive, too many dimensions, a byte count that disagrees, an unaligned
    buffer. The caller then decodes with ``codec.decode_raw``, which says what is wrong."""
    if dtype is None or len(shape) > MAX_REQUEST_RANK:
        return None
    count = math.prod(shape)
    if count <= 0 or count > MAX_REQUEST_SPAN or len(data) != count * dtype.itemsize:
        return None  # (a zero or an odd number of negative dimensions among them)
    try:  # one call where frombuffer and reshape were two (1.34 -> 0.78 µs for 1 x 64 FP32)
        array = np.ndarray(shape, dtype, data)
    except ValueError:  # negative dimensions whose product is positive
        return None
    return array if array.flags.aligned else None


_DATATYPES: dict[np.dtype[Any], DataType] = {}


def datatype_of(dtype: np.dtype[Any]) -> DataType:
    """``DataType.from_numpy(dtype)``, remembered for native numeric dtypes."""
    found = _DATATYPES.get(dtype)
    if found is None:
        found = DataType.from_numpy(dtype)
        if dtype.isnative and found is not DataType.BYTES and len(_DATATYPES) < 64:
            _DATATYPES[dtype] = found
    return found


def raw_bytes(array: np.ndarray, datatype: DataType) -> Any:
    """The raw layout of ``array`` (as ``codec.raw_buffer``): the array itself where it is
    C-contiguous and native little-endian (``bytes.join`` copies it once, into the answer)."""
    if (
        _LITTLE_HOST
        and datatype is not DataType.BYTES
        and array.dtype.isnative
        and array.flags.c_contiguous
    ):
        return array
    return codec.raw_buffer(array, datatype)


def _nbytes(raw: Any) -> int:
    return int(raw.nbytes) if type(raw) is np.ndarray else len(raw)


# -- answers out ----------------------------------------------------------------------------

_SMALL = [bytes((i,)) for i in range(0x80)]
_TF_NUMBERS = {layout[0].value: number for number, layout in TF_LAYOUTS.items()}


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= (1 << 64) - 1  # a negative int64 is its two's complement, ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    """A string field (nothing when empty: proto3 leaves defaults out)."""
    return _delimited(tag, text.encode()) if text else b""


def _packed(tag: bytes, values: Iterable[int]) -> bytes:
    payload = b"".join(map(_varint, values))
    return _delimited(tag, payload) if payload else b""


class _Remembered:
    """Encoded pieces that repeat from call to call (a model's name and version, an output's
    description), remembered; forgotten all at once past ``limit`` (shapes that vary)."""

    def __init__(self, limit: int = 512) -> None:
        self._pieces: dict[Any, Any] = {}
        self._limit = limit

    def get(self, key: Any) -> Any:
        return self._pieces.get(key)

    def put(self, key: Any, value: Any) -> Any:
        if len(self._pieces) >= self._limit:
            self._pieces.clear()
        self._pieces[key] = value
        return value


_KSERVE_HEADS = _Remembered()
_KSERVE_OUTPUTS = _Remembered()


def model_infer_response(
    model: str, version: str, request_id: str, outputs: Mapping[str, np.ndarray]
) -> Encoded:
    """``inference.ModelInferResponse`` with ``outputs`` as ``raw_output_contents``, in order,
    each described in ``outputs`` (name, KServe datatype, shape)."""
    head = _KSERVE_HEADS.get((model, version))
    if head is None:
        head = _KSERVE_HEADS.put((model, version), _text(b"\x0a", model) + _text(b"\x12", version))
    parts = [head, _text(b"\x1a", request_id)] if request_id else [head]
    contents: list[Any] = []
    for name, array in outputs.items():
        key = (name, array.dtype, array.shape)
        known = _KSERVE_OUTPUTS.get(key)
        if known is None:
            datatype = datatype_of(array.dtype)
            described = (
                _text(b"\x0a", name)
                + _text(b"\x12", datatype.value)
                + _packed(b"\x1a", array.shape)
            )
            known = _KSERVE_OUTPUTS.put(key, (_delimited(b"\x2a", described), datatype))
        parts.append(known[0])
        raw = raw_bytes(array, known[1])
        contents += (b"\x32", _varint(_nbytes(raw)), raw)
    return Encoded(b"".join(parts + contents))


_TF_SPECS = _Remembered()
_TF_TENSORS = _Remembered()


def predict_response(
    model: str, version: int, signature_name: str, outputs: Mapping[str, np.ndarray]
) -> Encoded:
    """``tensorflow.serving.PredictResponse``: ``outputs`` as TensorProtos (``tensor_content``
    for numbers, ``string_val`` for strings, as ``tfcodec.array_to_tensor``) and the model spec
    (name, version, signature name)."""
    parts: list[Any] = []
    for key, array in outputs.items():
        tensor = _tensor_proto(array)
        entry = [_text(b"\x0a", key), b"\x12", _varint(_size(tensor)), *tensor]
        parts += (b"\x0a", _varint(_size(entry)), *entry)
    spec = _TF_SPECS.get((model, version, signature_name))
    if spec is None:
        version_field = _delimited(b"\x12", b"\x08" + _varint(version) if version else b"")
        described = _text(b"\x0a", model) + version_field + _text(b"\x1a", signature_name)
        spec = _TF_SPECS.put((model, version, signature_name), _delimited(b"\x12", described))
    parts.append(spec)
    return Encoded(b"".join(parts))


def _tensor_proto(array: np.ndarray) -> list[Any]:
    """A ``tensorflow.TensorProto`` holding ``array``, as pieces to join."""
    key = (array.dtype, array.shape)
    known = _TF_TENSORS.get(key)
    if known is None:
        datatype = datatype_of(array.dtype)
        dims = b"".join(
            _delimited(b"\x12", b"\x08" + _varint(size) if size else b"") for size in array.shape
        )
        # A scalar's shape is left out (array_to_tensor adds no dimension to it).
        head = b"\x08" + _varint(_TF_NUMBERS[datatype.value])
        known = _TF_TENSORS.put(key, (head + _delimited(b"\x12", dims) if dims else head, datatype))
    head, datatype = known
    pieces: list[Any] = [head]
    if datatype is DataType.BYTES:
        for item in array.ravel(order="C").tolist():
            element = codec.bytes_element(item)
            pieces += (b"\x42", _varint(len(element)), element)
    else:
        raw = raw_bytes(array, datatype)
        size = _nbytes(raw)
        if size:
            pieces += (b"\x22", _varint(size), raw)
    return pieces


def _size(pieces: Sequence[Any]) -> int:
    return sum(map(_nbytes, pieces))
