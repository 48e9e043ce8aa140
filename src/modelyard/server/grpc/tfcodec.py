"""TensorFlow's ``TensorProto`` to and from numpy arrays, as TF Serving's gRPC API carries them.

Decoding accepts both encodings clients send: ``tensor_content`` (row-major little-endian raw
bytes; ``tf.make_tensor_proto`` writes it) and the typed ``*_val`` fields (``float_val``,
``int_val`` for 8/16/32-bit integers, ``string_val`` for DT_STRING, ...). As in TensorFlow, a
typed field holding exactly one value fills a tensor of any size. Encoding writes
``tensor_content`` for numbers (what TF Serving answers) and ``string_val`` for strings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelyard import codec
from modelyard.errors import InvalidArgument
from modelyard.server.defaults import DEFAULT_MAX_REQUEST_BYTES
from modelyard.server.grpc.hotpath import TF_LAYOUTS, raw_array
from modelyard.tensors import DataType, format_shape
from modelyard.tfproto.generated import tensorflow_core_pb2 as core

# The typed field of each datatype, and the numpy dtype protobuf hands its values back as.
_VAL_FIELD: dict[DataType, str] = {
    DataType.FP32: "float_val",
    DataType.FP64: "double_val",
    DataType.INT8: "int_val",
    DataType.INT16: "int_val",
    DataType.INT32: "int_val",
    DataType.UINT8: "int_val",
    DataType.UINT16: "int_val",
    DataType.INT64: "int64_val",
    DataType.UINT32: "uint32_val",
    DataType.UINT64: "uint64_val",
    DataType.BOOL: "bool_val",
    DataType.FP16: "half_val",  # IEEE half bit patterns, one per int32
    DataType.BYTES: "string_val",
}


def datatype_of(dtype: int, name: str) -> DataType:
    """The DataType of a ``tensorflow.DataType`` enum value; InvalidArgument naming the tensor."""
    return _layout(dtype, name)[0]


def _layout(dtype: int, name: str) -> tuple[DataType, np.dtype[Any] | None]:
    found = TF_LAYOUTS.get(dtype)
    if found is not None:
        return found
    try:
        tf_name = core.DataType.Name(dtype)
    except ValueError:
        tf_name = str(dtype)
    return codec.tf_datatype(tf_name, f"input {name!r}"), None  # it says why it is unknown


def tensor_to_array(
    tensor: Any, name: str, max_fill_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> np.ndarray:
    """The array a ``TensorProto`` holds; InvalidArgument naming ``name`` for a malformed one.

    TensorFlow fills a whole tensor from a single value; such a fill may make at most
    ``max_fill_bytes`` (the server's request size limit), so that a message of a few bytes
    cannot make the server allocate gigabytes. The common ``tensor_content`` takes
    ``hotpath.raw_array``; anything else, and every error, ``codec``'s way.
    """
    datatype, dtype = _layout(tensor.dtype, name)
    tensor_shape = tensor.tensor_shape
    if tensor_shape.unknown_rank:
        raise InvalidArgument(f"input {name!r} has unknown rank; send its shape")
    dims = [d.size for d in tensor_shape.dim]
    content = tensor.tensor_content
    if content and datatype is not DataType.BYTES:
        array = raw_array(content, dtype, dims)
        if array is not None:
            return array
    what = f"input {name!r}"
    shape = tuple(dims)
    count = codec.element_count(shape, what)
    if content and datatype is not DataType.BYTES:
        return codec.decode_raw(content, datatype, shape, what)
    field = _VAL_FIELD[datatype]
    values = getattr(tensor, field)[:]  # a list: numpy reads it faster than the field
    if datatype is DataType.BYTES:
        flat = np.empty(len(values), dtype=object)
        flat[:] = values
    elif datatype is DataType.FP16:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif datatype.numpy.kind in "iu":  # int_val carries INT8/INT16/UINT8/UINT16 as int32
        wide = np.asarray(values, dtype=np.uint64 if datatype is DataType.UINT64 else np.int64)
        flat = codec.narrow(wide, datatype, what)
    else:
        flat = np.asarray(values, dtype=datatype.numpy)
    if len(flat) == count:
        return flat.reshape(shape)
    if len(flat) == 1:  # TensorFlow's rule: one value fills the whole tensor
        filled = count * flat.dtype.itemsize
        if filled > max_fill_bytes:
            raise InvalidArgument(
                f"{what} holds one value to fill shape {format_shape(shape)}: "
                f"{filled} bytes, more than the {max_fill_bytes} a request may hold; "
                f"send the values"
            )
        return np.full(shape, flat[0], dtype=flat.dtype)
    raise codec.count_mismatch(what, len(flat), field, shape, " (or 1, to fill it)")


def array_to_tensor(array: np.ndarray, out: Any | None = None) -> Any:
    """A ``TensorProto`` (``out``, filled in place, or a new one) holding ``array``."""
    tensor = out if out is not None else core.TensorProto()
    datatype = DataType.from_numpy(array.dtype)
    tensor.dtype = core.DataType.Value(datatype.tf_name)
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if datatype is DataType.BYTES:
        tensor.string_val.extend(map(codec.bytes_element, array.ravel(order="C").tolist()))
    else:
        tensor.tensor_content = codec.encode_raw(array, datatype)
    return tensor


__all__ = ["array_to_tensor", "datatype_of", "tensor_to_array"]
