"""The KServe v2 raw tensor layout: numpy arrays to and from ``raw_input/output_contents`` bytes.

Layout (Open Inference Protocol, "raw" tensor data): the elements of one tensor in row-major
order, little-endian; BOOL one byte per element; BYTES elements each preceded by their length as
a 4-byte little-endian unsigned integer. The same layout serves KServe's binary tensor extension
over REST, so nothing here depends on gRPC.

BYTES tensors are numpy ``object`` arrays of ``bytes``. Numeric arrays decoded from raw bytes
are read-only views of the request's buffer (no copy); a consumer that writes to its inputs must
copy them first.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType, format_shape, request_element_count

_LENGTH = struct.Struct("<I")


def element_count(shape: Sequence[int], name: str) -> int:
    """The number of elements of input ``name``'s ``shape`` (see ``request_element_count``)."""
    return request_element_count(shape, f"input {name!r}")


def narrow(wide: np.ndarray, datatype: DataType, name: str) -> np.ndarray:
    """Typed-contents values of input ``name``, which protobuf hands back widened (8- and
    16-bit integers travel as 32-bit), as ``datatype``. A value that does not survive the
    narrowing would silently wrap around and answer for another input: InvalidArgument."""
    array = wide.astype(datatype.numpy, copy=False)
    if array.dtype != wide.dtype and not np.array_equal(array, wide):
        raise InvalidArgument(f"input {name!r} has values outside the range of {datatype.value}")
    return array


def decode_raw(data: bytes, datatype: DataType, shape: Sequence[int], name: str) -> np.ndarray:
    """The array that ``data`` encodes for a tensor ``name`` of ``datatype`` and ``shape``.

    Raises InvalidArgument, naming the expected and received sizes, when ``data`` does not hold
    exactly the elements ``shape`` calls for.
    """
    count = element_count(shape, name)
    if datatype is DataType.BYTES:
        return decode_bytes(data, count, name).reshape(tuple(shape))
    expected = count * datatype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"input {name!r}: raw contents hold {len(data)} bytes; expected {expected} bytes "
            f"for {count} {datatype.value} elements of shape {format_shape(shape)} "
            f"({datatype.itemsize} bytes each)"
        )
    little_endian = datatype.numpy.newbyteorder("<")
    array = np.frombuffer(data, dtype=little_endian).reshape(tuple(shape))
    # A no-op on little-endian hosts; elsewhere it converts to the native byte order.
    return array.astype(datatype.numpy, copy=False)


def encode_raw(array: np.ndarray, datatype: DataType) -> bytes:
    """The raw layout of ``array`` as a tensor of ``datatype`` (which its dtype must hold)."""
    if datatype is DataType.BYTES:
        return encode_bytes(array)
    little_endian = datatype.numpy.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little_endian).tobytes()


def decode_bytes(data: bytes, count: int, name: str) -> np.ndarray:
    """``count`` length-prefixed BYTES elements from ``data``, as a 1-d ``object`` array.

    Raises InvalidArgument when ``data`` holds fewer or more elements than ``count``, or an
    element's length prefix runs past the end of the data.
    """
    view = memoryview(data)
    # Checked before allocating: a small request must not make us allocate for a huge shape.
    if count * _LENGTH.size > len(view):
        raise InvalidArgument(
            f"input {name!r}: raw BYTES contents hold {len(view)} bytes, too few for {count} "
            f"elements (each needs at least a {_LENGTH.size}-byte length)"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(view):
            raise InvalidArgument(
                f"input {name!r}: raw BYTES contents end after {index} elements; "
                f"expected {count} elements, each a 4-byte little-endian length and its bytes"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise InvalidArgument(
                f"input {name!r}: BYTES element {index} declares {length} bytes but only "
                f"{len(view) - offset} remain in the raw contents"
            )
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidArgument(
            f"input {name!r}: raw BYTES contents hold {len(view) - offset} bytes after the "
            f"{count} elements its shape calls for"
        )
    return out


def encode_bytes(array: np.ndarray) -> bytes:
    """Length-prefixed BYTES elements of ``array`` in row-major order; ``str`` goes as UTF-8.

    Raises TypeError for an element that is neither ``bytes`` nor ``str``.
    """
    parts: list[bytes] = []
    for element in np.asarray(array).ravel(order="C"):
        if isinstance(element, bytes):
            value = element
        elif isinstance(element, str):
            value = element.encode()
        else:
            raise TypeError(f"a BYTES element must be bytes or str, not {type(element).__name__}")
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)
