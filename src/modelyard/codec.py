"""Tensors on the wire: the one codec every protocol uses to turn bytes and values into arrays.

Owns, for every protocol (worker frames, KServe v2 REST JSON and binary, KServe v2 gRPC typed and
raw contents, TF Serving REST and gRPC):

* **Datatype names**: KServe names (``FP32``) on the KServe APIs, TensorFlow names (``DT_FLOAT``)
  on TF Serving's gRPC API. A name of the other family is refused, as any unknown name, with an
  InvalidArgument that lists the names the API takes. ``BF16`` (in the KServe list) has no numpy
  type and is refused the same way.
* **The raw layout** (KServe's raw contents, Triton's binary tensor extension, TF's
  ``tensor_content``, the worker protocol's buffers): elements in row-major order, little-endian;
  BOOL one byte each; BYTES elements each a 4-byte little-endian length and that many bytes.
* **BYTES elements going out**: ``bytes`` as they are, ``bytearray``/``memoryview`` as their
  bytes, ``str`` as UTF-8, anything else as the UTF-8 of ``str(item)`` (what tritonclient's
  ``serialize_byte_tensor`` does; the int 5 is ``b"5"``).
* **JSON values coming in**: numbers for FP*, integers in range for INT*/UINT*, booleans for
  BOOL, strings for BYTES; a value of another JSON type (a number in a BYTES tensor) is refused.
* **The error messages** for the faults every protocol can meet (a byte count that disagrees with
  the shape, a value outside its type's range, a count of values that disagrees with the shape),
  so the same fault reads the same on every protocol. ``what`` names the tensor
  (``input 'x'``).

Decoded numeric arrays are views of the caller's buffer when it is aligned (writable when the
buffer is), else aligned copies; nothing here copies a numeric tensor that need not be copied.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType, format_shape, overflowed, request_element_count

Buffer = bytes | bytearray | memoryview

_LENGTH = struct.Struct("<I")

_LITTLE: dict[DataType, np.dtype[Any]] = {
    d: d.numpy.newbyteorder("<") for d in DataType if d is not DataType.BYTES
}
"""Each numeric datatype's little-endian numpy dtype (the native one on every host we run on)."""

# -- datatype names -------------------------------------------------------------------------

_KSERVE_NAMES: dict[str, DataType] = {d.value: d for d in DataType}
_TF_NAMES: dict[str, DataType] = {d.tf_name: d for d in DataType}


def kserve_datatype(name: str, what: str) -> DataType:
    """The DataType of a KServe name (``FP32``) that ``what`` declares; InvalidArgument listing
    the KServe names otherwise (a TF name such as ``DT_FLOAT`` included)."""
    datatype = _KSERVE_NAMES.get(name)
    if datatype is None:
        raise _unsupported_datatype(what, name, _KSERVE_NAMES)
    return datatype


def tf_datatype(name: str, what: str) -> DataType:
    """The DataType of a TensorFlow name (``DT_FLOAT``) that ``what`` declares; InvalidArgument
    listing the TF names modelyard serves otherwise."""
    datatype = _TF_NAMES.get(name)
    if datatype is None:
        raise _unsupported_datatype(what, name, _TF_NAMES)
    return datatype


def _unsupported_datatype(what: str, name: str, names: dict[str, DataType]) -> InvalidArgument:
    return InvalidArgument(
        f"{what} has unsupported datatype {name!r}; expected one of {', '.join(names)}"
    )


# -- counts and ranges ----------------------------------------------------------------------


def element_count(shape: Sequence[int], what: str) -> int:
    """The number of elements of a request tensor's ``shape`` (see ``request_element_count``)."""
    return request_element_count(shape, what)


def check_count(what: str, found: int, where: str, shape: Sequence[int]) -> None:
    """InvalidArgument when ``found`` values (in ``where``: ``its data``, ``float_val``) are not
    the element count of ``shape``."""
    if found != math.prod(shape):
        raise count_mismatch(what, found, where, shape)


def count_mismatch(
    what: str, found: int, where: str, shape: Sequence[int], hint: str = ""
) -> InvalidArgument:
    """The error for ``found`` values where ``shape`` needs another count (``hint`` is added to
    the expectation: TF's `` (or 1, to fill it)``)."""
    return InvalidArgument(
        f"{what} has {found} values in {where}; expected {math.prod(shape)}{hint} for shape "
        f"{format_shape(shape)}"
    )


def narrow(wide: np.ndarray, datatype: DataType, what: str) -> np.ndarray:
    """``wide`` values (protobuf hands 8- and 16-bit integers back as 32- or 64-bit ones) as
    ``datatype``. A value that would wrap around and answer for another input: InvalidArgument."""
    array = wide.astype(datatype.numpy, copy=False)
    if array.dtype != wide.dtype and not np.array_equal(array, wide):
        bad = wide.reshape(-1)[np.argmax(array.reshape(-1) != wide.reshape(-1))]
        raise out_of_range(what, datatype, int(bad))
    return array


def out_of_range(what: str, datatype: DataType, value: int) -> InvalidArgument:
    """The error for an integer ``value`` that ``datatype`` cannot hold."""
    info = np.iinfo(datatype.numpy.name)
    return InvalidArgument(
        f"{what} holds {value}, outside the range of {datatype.value} [{info.min}, {info.max}]"
    )


def too_large(what: str, datatype: DataType) -> InvalidArgument:
    """The error for a number past a float type's largest value (it would become infinite)."""
    largest = float(np.finfo(datatype.numpy.name).max)
    return InvalidArgument(
        f"{what} holds a number too large for {datatype.value} (largest {largest:g})"
    )


# -- the raw layout -------------------------------------------------------------------------


def decode_raw(data: Buffer, datatype: DataType, shape: Sequence[int], what: str) -> np.ndarray:
    """The tensor of ``datatype`` and ``shape`` that the raw bytes ``data`` hold.

    InvalidArgument, naming the expected and received sizes, when ``data`` does not hold exactly
    the elements ``shape`` calls for. BYTES decode to an object array of ``bytes``.
    """
    count = element_count(shape, what)
    if datatype is DataType.BYTES:
        return decode_bytes(data, count, what).reshape(tuple(shape))
    expected = count * datatype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"{what} has {len(data)} bytes of raw data; expected {expected} bytes for "
            f"{datatype.value} {format_shape(shape)} ({count} x {datatype.itemsize} bytes)"
        )
    if count == 0:
        return np.empty(tuple(shape), dtype=datatype.numpy)
    little = _LITTLE[datatype]
    array = np.frombuffer(data, dtype=little, count=count)
    # A view where numpy can use it as is; else a copy (a memcpy, or a byte swap elsewhere).
    if not (array.flags.aligned and little.isnative):
        array = array.astype(datatype.numpy)
    return array.reshape(tuple(shape))


def raw_buffer(array: np.ndarray, datatype: DataType) -> memoryview | bytes:
    """The raw layout of ``array`` as a tensor of ``datatype`` (which its dtype must hold): a
    view of ``array`` when it is C-contiguous and little-endian already, so no copy."""
    if datatype is DataType.BYTES:
        return encode_bytes(array)
    if array.dtype.byteorder == ">":  # the wire is little-endian, like every host we run on
        array = array.astype(_LITTLE[datatype])
    return np.ascontiguousarray(array).reshape(-1).data.cast("B")


def encode_raw(array: np.ndarray, datatype: DataType) -> bytes:
    """``raw_buffer`` as ``bytes`` (for protobuf, which keeps its own copy)."""
    buffer = raw_buffer(array, datatype)
    return buffer if isinstance(buffer, bytes) else buffer.tobytes()


def decode_bytes(data: Buffer, count: int, what: str) -> np.ndarray:
    """``count`` length-prefixed BYTES elements from ``data``, as a 1-d ``object`` array.

    InvalidArgument when ``data`` holds fewer or more elements than ``count``, or an element's
    length runs past the end of the data.
    """
    view = memoryview(data).cast("B")
    end = len(view)
    # Checked before allocating: a small request must not make us allocate for a huge shape.
    if count * _LENGTH.size > end:
        raise InvalidArgument(
            f"{what} has {end} bytes of raw BYTES data, too few for {count} elements "
            f"(each a {_LENGTH.size}-byte little-endian length and its bytes)"
        )
    items: list[bytes] = []
    append = items.append
    unpack = _LENGTH.unpack_from
    offset = 0
    for index in range(count):
        if offset + 4 > end:
            raise InvalidArgument(
                f"{what} has raw BYTES data that ends after {index} elements; expected {count} "
                "elements, each a 4-byte little-endian length and its bytes"
            )
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"{what} has a BYTES element (number {index}) of {length} bytes but only "
                f"{end - offset} bytes follow in its raw data"
            )
        append(view[offset : offset + length].tobytes())
        offset += length
    if offset != end:
        raise InvalidArgument(
            f"{what} has {end - offset} bytes of raw BYTES data after the {count} elements "
            "its shape calls for"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def encode_bytes(array: np.ndarray) -> bytes:
    """Length-prefixed BYTES elements of ``array`` in row-major order (see ``bytes_element``)."""
    parts: list[bytes] = []
    append, pack = parts.append, _LENGTH.pack
    for item in np.asarray(array).ravel(order="C").tolist():
        data = item if type(item) is bytes else bytes_element(item)
        append(pack(len(data)))
        append(data)
    return b"".join(parts)


def bytes_element(item: Any) -> bytes:
    """One BYTES element as bytes: bytes-like as is, ``str`` as UTF-8, anything else as the UTF-8
    of ``str(item)`` (as tritonclient serialises a BYTES tensor: the int 5 is ``b"5"``)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    return str(item).encode()


# -- JSON values ----------------------------------------------------------------------------

_FLOAT64 = np.dtype(np.float64)
_NARROW_FLOATS: dict[DataType, tuple[np.dtype[Any], float]] = {
    d: (d.numpy, float(np.finfo(d.numpy.name).max))
    for d in (DataType.FP16, DataType.FP32, DataType.FP64)
}
"""The float datatypes ``json_numbers`` converts through float64: dtype and largest value."""

# Python types a JSON value may have, per datatype kind. ``bool`` is a subclass of ``int`` but
# ``type()`` tells them apart, so ``true`` is refused for numbers and ``1`` for BOOL.
_FLOAT_TYPES = frozenset({float, int})
_INT_TYPES = frozenset({int})
_BOOL_TYPES = frozenset({bool})
JSON_NAMES: dict[type, str] = {
    float: "number",
    int: "integer",
    bool: "boolean",
    str: "string",
    dict: "object",
    list: "array",
    type(None): "null",
}


def json_numbers(what: str, datatype: DataType, data: Any) -> np.ndarray:
    """JSON ``data`` (a value, or rectangular nested lists) as an array of numeric ``datatype``.

    Every leaf must have the JSON type of ``datatype`` (numbers, integers in range, booleans).
    """
    narrow = _NARROW_FLOATS.get(datatype)
    if narrow is not None:
        # Python floats to float64 is a copy per element (about 3 us for 64 numbers) where to
        # float32 is a cast per element (about 12 us), and a cast of a value too large warns
        # unless under np.errstate (5 us more). So: to float64, and when every value is finite
        # and within the narrow type's range (nothing can overflow), cast; the same values as
        # the direct conversion (both round each double once). Anything else (a value out of
        # range, a leaf numpy refused) takes the general conversion below, which also writes
        # the error messages.
        try:
            wide = np.asarray(data, dtype=_FLOAT64)
        except (OverflowError, ValueError, TypeError):
            wide = None
        # One reduction over the magnitudes rather than max() and min() (each a reduction
        # behind a Python-level wrapper): about half the cost for a tiny model's request.
        # NaN (a null, or a string "nan") fails the comparison: the general path decides.
        if wide is not None and wide.size and np.abs(wide).max() <= narrow[1]:
            found = _leaf_types(data, wide.ndim)
            if found <= _FLOAT_TYPES:
                return wide if narrow[0] is _FLOAT64 else wide.astype(narrow[0])
            raise wrong_json_types(what, datatype, found - _FLOAT_TYPES)
    return _json_numbers(what, datatype, data)


def _json_numbers(what: str, datatype: DataType, data: Any) -> np.ndarray:
    """``json_numbers`` by numpy's conversion to ``datatype`` (every datatype, every error)."""
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(data, dtype=datatype.numpy)
    except OverflowError:
        raise _range_error(what, datatype, data) from None
    except (ValueError, TypeError):
        check_rectangular(what, data)
        raise wrong_json_types(what, datatype, _leaf_types_any(data)) from None
    if overflowed(array):
        raise too_large(what, datatype)
    # np.asarray converts too eagerly (strings "1.5" and booleans to floats, 1.7 to the int 1),
    # so check the JSON types of the leaves: a C-level pass, no per-element Python code.
    allowed = _allowed_types(datatype)
    found = _leaf_types(data, array.ndim)
    if not found <= allowed:
        raise wrong_json_types(what, datatype, found - allowed)
    return array


def json_strings(
    what: str,
    data: Any,
    other: Callable[[Any], bytes | None] | None = None,
    expected: str = "strings",
) -> np.ndarray:
    """JSON ``data`` (a string, or rectangular nested lists of them) as an object array of
    UTF-8 ``bytes``. ``other(leaf)``, when given, turns a leaf that is not a string into bytes,
    or None to refuse it (TF Serving's ``{"b64": ...}``); ``expected`` says what is accepted."""
    # dtype=object keeps strings as references (no fixed-width copy sized by the longest) and
    # leaves a ragged level as list elements, which the type check below reports.
    objects = np.asarray(data, dtype=object)
    flat = objects.ravel().tolist()
    found = set(map(type, flat))
    if list in found:
        check_rectangular(what, data)
    out = np.empty(len(flat), dtype=object)
    if found <= {str}:
        out[:] = [text.encode() for text in flat]
        return out.reshape(objects.shape)
    converted = [
        item.encode() if type(item) is str else None if other is None else other(item)
        for item in flat
    ]
    refused = {type(item) for item, value in zip(flat, converted, strict=True) if value is None}
    if refused:
        raise wrong_json_types(what, DataType.BYTES, refused, expected)
    out[:] = converted
    return out.reshape(objects.shape)


def wrong_json_types(
    what: str, datatype: DataType, found: set[type], expected: str | None = None
) -> InvalidArgument:
    """The error for JSON values of the types ``found`` where ``datatype`` wants others."""
    names = ", ".join(sorted({JSON_NAMES.get(t, t.__name__) for t in found}))
    return InvalidArgument(
        f"{what} has data that is not {datatype.value}: found {names} values; "
        f"expected {expected or _expected_json(datatype)}"
    )


def check_rectangular(what: str, data: Any) -> None:
    """Raise InvalidArgument naming the first ragged level of nested lists (error path only)."""
    level: list[Any] = [data]
    depth = 0
    while True:
        lists = [isinstance(item, list) for item in level]
        if not any(lists):
            return
        if not all(lists):
            raise InvalidArgument(
                f"{what} has ragged data: at nesting depth {depth} some entries are lists and "
                "some are values; expected a flat list or rectangular nested lists"
            )
        lengths = {len(item) for item in level}
        if len(lengths) > 1:
            raise InvalidArgument(
                f"{what} has ragged data: lists at nesting depth {depth + 1} have lengths "
                f"{sorted(lengths)[:5]}; expected a flat list or rectangular nested lists "
                "(all rows of equal length)"
            )
        level = list(itertools.chain.from_iterable(level))
        depth += 1


def _range_error(what: str, datatype: DataType, data: Any) -> InvalidArgument:
    """The error for JSON integers numpy refused to convert (error path only)."""
    if datatype.numpy.kind == "f":
        return too_large(what, datatype)
    info = np.iinfo(datatype.numpy.name)
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif type(item) is int and not info.min <= item <= info.max:
            return out_of_range(what, datatype, item)
    return InvalidArgument(f"{what} holds a value outside the range of {datatype.value}")


def _leaf_types(data: Any, ndim: int) -> set[type]:
    """The Python types of the leaves of rectangular nested lists ``ndim`` deep."""
    if ndim == 0:
        return {type(data)}
    flat = data
    for _ in range(ndim - 1):
        flat = itertools.chain.from_iterable(flat)
    return set(map(type, flat))


def _leaf_types_any(data: Any) -> set[type]:
    """Leaf types of arbitrary nested lists (error path only)."""
    found: set[type] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            found.add(type(item))
    return found


def _allowed_types(datatype: DataType) -> frozenset[type]:
    if datatype is DataType.BOOL:
        return _BOOL_TYPES
    if datatype.numpy.kind == "f":
        return _FLOAT_TYPES
    return _INT_TYPES


def _expected_json(datatype: DataType) -> str:
    if datatype is DataType.BOOL:
        return "JSON booleans"
    if datatype is DataType.BYTES:
        return "strings"
    if datatype.numpy.kind == "f":
        return "JSON numbers"
    info = np.iinfo(datatype.numpy.name)
    return f"JSON integers from {info.min} to {info.max}"
