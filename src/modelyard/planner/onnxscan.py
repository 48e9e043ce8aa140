"""Initializer bytes of an ONNX file, read by walking its protobuf wire format.

``onnx.load`` materialises the whole model, weights included, in the calling process: sizing
a 381 MiB model that way took the front end from 80 to 811 MiB and held its event loop for a
second. This walker reads only tags, lengths and the few small fields it needs (dims, data
type, external data locations) and *seeks over* every tensor's data, so memory stays flat and
no framework is imported. It counts the bytes of data actually present in the file; a tensor
that declares dimensions but carries no data counts nothing (loading it fails, and says so).

Anything that is not well-formed protobuf (a length past the end of its message, an invalid
wire type, no graph) raises ``InvalidArgument`` naming the file and the byte offset.

Field numbers are onnx.proto's (ONNX IR version 3 and later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from modelyard.errors import InvalidArgument

# ModelProto
_MODEL_GRAPH = 7
# GraphProto
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
# NodeProto
_NODE_ATTRIBUTE = 5
# AttributeProto
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 22, 23
# SparseTensorProto
_SPARSE_VALUES = 1
# TensorProto
_T_DATA_TYPE, _T_FLOAT, _T_INT32, _T_STRING, _T_INT64 = 2, 4, 5, 6, 7
_T_RAW, _T_DOUBLE, _T_UINT64, _T_EXTERNAL, _T_LOCATION = 9, 10, 11, 13, 14
# StringStringEntryProto
_ENTRY_KEY, _ENTRY_VALUE = 1, 2

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_DEPTH = 64
_SMALL = 1 << 16
"""Largest string field read into memory (names, external data keys); longer ones are skipped."""
_CHUNK = 1 << 20
_LOW_BYTES = bytes(range(0x80))

# Bytes per element for TensorProto.DataType values (onnx.proto); 4-bit types count 1/2.
ITEMSIZE: dict[int, float] = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
    16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 0.5, 22: 0.5, 23: 0.5,
}  # fmt: skip
_STRING = 8
_EXTERNAL = 1


@dataclass
class OnnxWeights:
    """What the walk found: bytes of data in the file, and the external data files named."""

    inline_bytes: int = 0
    external: set[str] = field(default_factory=set)
    graphs: int = 0


def scan_onnx(path: Path) -> OnnxWeights:
    """Walk ``path`` (see the module doc). Raises InvalidArgument for a malformed file."""
    size = path.stat().st_size
    found = OnnxWeights()
    with path.open("rb") as f:
        walker = _Walker(f, path, found)
        for number, wire, end in _Fields(walker, size):
            if number == _MODEL_GRAPH and wire == _LEN:
                walker.graph(end, 1)
            else:
                walker.skip(wire, end)
    if found.graphs == 0:
        raise InvalidArgument(
            f"{path} is not an ONNX model: it holds no graph "
            f"({size} bytes{', empty' if size == 0 else ''})"
        )
    return found


@dataclass
class _Tensor:
    data_type: int = 0
    inline: int = 0
    elements: int = 0
    strings: int = 0
    external: bool = False
    location: str = ""


class _Walker:
    def __init__(self, f: BinaryIO, path: Path, found: OnnxWeights) -> None:
        self._f = f
        self._path = path
        self._found = found

    # -- wire format ----------------------------------------------------------------------

    def _bad(self, what: str) -> InvalidArgument:
        return InvalidArgument(
            f"{self._path} is not a valid ONNX model: {what} at byte {self._f.tell()} of its "
            "protobuf; expected a model written by onnx.save (a truncated copy reads like this)"
        )

    def _varint(self, end: int) -> int:
        result = shift = 0
        while True:
            if self._f.tell() >= end:
                raise self._bad("a number runs past the end of its message")
            byte = self._f.read(1)
            if not byte:
                raise self._bad("the file ends inside a number")
            result |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise self._bad("a number longer than 10 bytes")

    def next_field(self, end: int) -> tuple[int, int, int] | None:
        """(field number, wire type, end) of the next field, positioned at its value; None at
        ``end``. ``end`` is where the value ends, except for a varint, whose end is only known
        once read: then it is the message's end (the bound for reading it)."""
        if self._f.tell() >= end:
            return None
        tag = self._varint(end)
        number, wire = tag >> 3, tag & 7
        if not 0 < number < 2**29:
            raise self._bad("an invalid field number")
        if wire == _VARINT:
            value_end = end
        elif wire == _I64:
            value_end = self._f.tell() + 8
        elif wire == _I32:
            value_end = self._f.tell() + 4
        elif wire == _LEN:
            length = self._varint(end)
            value_end = self._f.tell() + length
        else:
            raise self._bad(f"wire type {wire}")
        if value_end > end:
            raise self._bad(f"field {number} runs past the end of its message")
        return number, wire, value_end

    def skip(self, wire: int, end: int) -> None:
        if wire == _VARINT:
            self._varint(end)
        else:
            self._f.seek(end)

    def _small(self, end: int) -> str:
        length = end - self._f.tell()
        if length > _SMALL:
            self._f.seek(end)
            return ""
        return self._f.read(length).decode("utf-8", "replace")

    # -- messages -------------------------------------------------------------------------

    def graph(self, end: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise self._bad(f"graphs nested more than {_MAX_DEPTH} deep")
        self._found.graphs += 1
        for number, wire, value_end in _Fields(self, end):
            if wire != _LEN:
                self.skip(wire, value_end)
            elif number == _GRAPH_INITIALIZER:
                self.tensor(value_end)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(value_end)
            elif number == _GRAPH_NODE:
                self.node(value_end, depth)
            else:
                self._f.seek(value_end)

    def node(self, end: int, depth: int) -> None:
        for number, wire, value_end in _Fields(self, end):
            if number == _NODE_ATTRIBUTE and wire == _LEN:
                self.attribute(value_end, depth)
            else:
                self.skip(wire, value_end)

    def attribute(self, end: int, depth: int) -> None:
        for number, wire, value_end in _Fields(self, end):
            if wire != _LEN:
                self.skip(wire, value_end)
            elif number in (_ATTR_T, _ATTR_TENSORS):
                self.tensor(value_end)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(value_end, depth + 1)
            elif number in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                self.sparse(value_end)
            else:
                self._f.seek(value_end)

    def sparse(self, end: int) -> None:
        for number, wire, value_end in _Fields(self, end):
            if number == _SPARSE_VALUES and wire == _LEN:
                self.tensor(value_end)
            else:
                self.skip(wire, value_end)

    def tensor(self, end: int) -> None:
        t = _Tensor()
        for number, wire, value_end in _Fields(self, end):
            if number == _T_DATA_TYPE and wire == _VARINT:
                t.data_type = self._varint(value_end)
            elif number == _T_LOCATION and wire == _VARINT:
                t.external = self._varint(value_end) == _EXTERNAL
            elif number == _T_RAW and wire == _LEN:
                t.inline += value_end - self._f.tell()
                self._f.seek(value_end)
            elif number == _T_STRING and wire == _LEN:
                t.strings += value_end - self._f.tell()
                self._f.seek(value_end)
            elif number in (_T_FLOAT, _T_DOUBLE, _T_INT32, _T_INT64, _T_UINT64):
                t.elements += self._count_elements(number, wire, value_end)
            elif number == _T_EXTERNAL and wire == _LEN:
                key, value = self.entry(value_end)
                if key == "location":
                    t.location = value
            else:
                self.skip(wire, value_end)
        if t.external:
            if t.location:
                self._found.external.add(t.location)
            return
        if t.inline:
            self._found.inline_bytes += t.inline
        elif t.data_type == _STRING:
            self._found.inline_bytes += t.strings
        else:
            self._found.inline_bytes += math.ceil(t.elements * ITEMSIZE.get(t.data_type, 8))

    def entry(self, end: int) -> tuple[str, str]:
        key = value = ""
        for number, wire, value_end in _Fields(self, end):
            if number == _ENTRY_KEY and wire == _LEN:
                key = self._small(value_end)
            elif number == _ENTRY_VALUE and wire == _LEN:
                value = self._small(value_end)
            else:
                self.skip(wire, value_end)
        return key, value

    def _count_elements(self, number: int, wire: int, end: int) -> int:
        """Elements in a typed data field: packed (one length-delimited run) or one value."""
        if wire != _LEN:
            self.skip(wire, end)
            return 1
        if number in (_T_FLOAT, _T_DOUBLE):
            width = 4 if number == _T_FLOAT else 8
            count = (end - self._f.tell()) // width
            self._f.seek(end)
            return count
        count = 0  # packed varints: one per byte without the continuation bit
        while self._f.tell() < end:
            chunk = self._f.read(min(_CHUNK, end - self._f.tell()))
            if not chunk:
                raise self._bad("the file ends inside a packed field")
            count += len(chunk) - len(chunk.translate(None, _LOW_BYTES))
        return count


class _Fields:
    """Iterates the fields of one message, from the current position to ``end``."""

    def __init__(self, walker: _Walker, end: int) -> None:
        self._walker = walker
        self._end = end

    def __iter__(self) -> _Fields:
        return self

    def __next__(self) -> tuple[int, int, int]:
        found = self._walker.next_field(self._end)
        if found is None:
            raise StopIteration
        return found
