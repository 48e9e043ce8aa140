"""The parts every frame is made of, whichever its header: the prefix and the buffers'
lengths, the padding that aligns the first buffer, the JSON header's frame (``json_frame``) and
the parts of a frame whose header is ready (``frame_parts``), and tensors as raw buffers
(``tensor_parts`` to write them, ``tensor_from_buffer`` to read one back).

The frame layout itself is described in ``modelyard.workers.protocol``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from modelyard import codec
from modelyard.tensors import DataType

PREFIX = struct.Struct("<IIQ")
"""header_len, n_buffers, body_len."""
LEN = struct.Struct("<Q")
"""A buffer's length."""
PREFIX_BYTES = PREFIX.size
LEN_BYTES = LEN.size
MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A header larger than this is a corrupt stream, not a message."""
PADS = tuple(b" " * n for n in range(8))
_DATATYPE_OF_NAME: dict[str, DataType] = {t.value: t for t in DataType}
WIRE_DTYPE_OF_NAME: dict[str, np.dtype[Any]] = {
    t.value: t.numpy.newbyteorder("<") for t in DataType if t is not DataType.BYTES
}
"""Each numeric type's dtype on the wire (little-endian)."""
_MAX_RANK = 32
_DATATYPE_OF_DTYPE: dict[np.dtype[Any], tuple[DataType, str, bool]] = {}
"""``DataType.from_numpy`` of the dtypes seen so far (it compares against every type), its name
(an enum's ``value`` is a Python call), and whether an array's bytes are the wire's as they are
(a numeric type, little-endian)."""


# -- tensors as raw buffers --------------------------------------------------------------


def tensor_from_buffer(
    datatype: str, shape: Sequence[Any], buffer: bytes | bytearray | memoryview, name: str = ""
) -> np.ndarray:
    """Rebuild tensor ``name`` from its datatype's name, shape and raw buffer; InvalidArgument
    if they disagree (``decode`` makes it a ProtocolError: a bad frame never becomes an
    answer)."""
    wire = WIRE_DTYPE_OF_NAME.get(datatype)
    # The common case in a few C calls: a numeric tensor whose buffer holds exactly its
    # elements. Anything else (BYTES, a size that disagrees, a negative dimension) is left to
    # the codec, which names what is wrong. (``min`` without ``default=``: a keyword argument
    # costs the call as much again.)
    if wire is not None and len(shape) <= _MAX_RANK and (not shape or min(shape) >= 0):
        count = math.prod(shape)
        if count and len(buffer) == count * wire.itemsize:
            array = np.frombuffer(buffer, wire)
            if not array.flags.aligned:
                array = array.astype(wire.newbyteorder("="))
            return array.reshape(shape)
    known = _DATATYPE_OF_NAME.get(datatype) or DataType(datatype)  # the latter raises
    return codec.decode_raw(buffer, known, tuple(map(int, shape)), f"tensor {name!r}")


def tensor_parts(
    arrays: Mapping[str, np.ndarray], metas: list[list[Any]], buffers: list[bytes | memoryview]
) -> None:
    """Append each array's ``[name, datatype, shape]`` to ``metas`` and its raw buffer to
    ``buffers``."""
    for name, array in arrays.items():
        dtype = array.dtype
        known = _DATATYPE_OF_DTYPE.get(dtype)
        if known is None:
            datatype = DataType.from_numpy(dtype)
            wire = datatype is not DataType.BYTES and dtype == datatype.numpy.newbyteorder("<")
            known = _DATATYPE_OF_DTYPE[dtype] = (datatype, datatype.value, wire)
        metas.append([name, known[1], array.shape])  # orjson writes a tuple as a list
        if known[2]:
            try:  # the array's own bytes, viewed (codec.raw_buffer's result, in one C call)
                buffers.append(array.data.cast("B"))
                continue
            except TypeError:  # not C-contiguous, or empty: the codec's way
                pass
        buffers.append(codec.raw_buffer(array, known[0]))


def frame_parts(header: bytes, buffers: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The parts of a frame whose header (a multiple of 8 bytes) is ready: as ``json_frame``'s."""
    if not buffers:
        return [PREFIX.pack(len(header), 0, len(header)) + header]
    sizes = list(map(len, buffers))
    body_len = len(header) + LEN_BYTES * len(buffers) + sum(sizes)
    parts: list[bytes | memoryview] = [
        PREFIX.pack(len(header), len(buffers), body_len) + header + LEN.pack(sizes[0]),
        buffers[0],
    ]
    for index in range(1, len(buffers)):
        parts.append(LEN.pack(sizes[index]))
        parts.append(buffers[index])
    return parts


def json_frame(
    kind: int, fields: dict[str, Any], metas: list[list[Any]], buffers: list[bytes | memoryview]
) -> list[bytes | memoryview]:
    """The parts of one frame with a JSON header: the prefix, header and first buffer's length
    in one ``bytes``, then each buffer (a view, not copied) and the next one's length."""
    header = orjson.dumps({"k": kind, "f": fields, "t": metas})
    if not buffers:
        return [PREFIX.pack(len(header), 0, len(header)) + header]
    # Spaces after the JSON, so that the first buffer starts 8-byte aligned in the body: an
    # array on an unaligned buffer is copied by the reader (``tensor_from_buffer``).
    header += PADS[-(len(header) + LEN_BYTES) % 8]
    return frame_parts(header, buffers)
