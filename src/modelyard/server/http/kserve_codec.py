"""KServe v2 (Open Inference Protocol) REST bodies <-> numpy arrays, with no web framework.

Covers JSON tensors and Triton's binary tensor data extension exactly as ``tritonclient.http``
speaks it:

* Request: with header ``Inference-Header-Content-Length: N`` the first N bytes of the body are
  the JSON inference header and the rest holds the raw data of every input whose
  ``parameters.binary_data_size`` is set, back to back in input order. Fixed-size types are
  little-endian; BYTES elements are each a 4-byte little-endian length and that many bytes.
* Response: an output is sent binary when its own ``parameters.binary_data`` is true, or when it
  does not say and the request's ``parameters.binary_data_output`` is true (tritonclient sends
  that when it lists no outputs). Binary outputs carry ``parameters.binary_data_size`` and their
  bytes follow the JSON header in output order.

Every function here is pure: it raises ``InvalidArgument`` (or ``Unimplemented`` /
``BodyTooLarge``) with a message that names the tensor, what was wrong and what was expected,
and never returns an array that disagrees with what the client declared. Datatypes are taken as
the client declares them; checking them against the model's signature is the data plane's job.

Decoded arrays are C-contiguous, native-endian, writable and own (or share) no buffer the caller
reuses. BYTES tensors decode to object arrays of ``bytes``.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelyard.errors import InvalidArgument, Unimplemented
from modelyard.server.http import jsonarrays
from modelyard.server.http.common import BodyTooLarge, parse_json
from modelyard.tensors import DataType, format_shape, overflowed, request_element_count

HEADER_LENGTH = "Inference-Header-Content-Length"

# Python types a JSON value may have, per datatype kind. ``bool`` is a subclass of ``int`` but
# ``type()`` tells them apart, so ``true`` is refused for numbers and ``1`` for BOOL.
_FLOAT_TYPES = frozenset({float, int})
_INT_TYPES = frozenset({int})
_BOOL_TYPES = frozenset({bool})
_JSON_NAMES: dict[type, str] = {
    float: "number",
    int: "integer",
    bool: "boolean",
    str: "string",
    dict: "object",
    list: "array",
    type(None): "null",
}

_BYTES_LENGTH = np.dtype("<u4")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the request names, and whether it wants the output's data binary."""

    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded inference request.

    ``outputs`` is None when the request lists none (then every output is returned and
    ``binary_output`` says how).
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool

    @property
    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes in the binary section of the response."""
        for output in self.outputs or ():
            if output.name == name:
                return output.binary
        return self.binary_output


# -- request --------------------------------------------------------------------------------


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip or deflate, as tritonclient sends them).

    The decompressed size is bounded by ``limit`` (BodyTooLarge past it), so a small
    compressed body cannot expand into unbounded memory.
    """
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in ("gzip", "deflate"):
        raise InvalidArgument(
            f"unsupported Content-Encoding {encoding!r}; expected gzip, deflate or none"
        )
    # wbits 32+15 accepts both the gzip and the zlib wrapper; "deflate" means zlib in HTTP.
    decompressor = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidArgument(f"the request body is not valid {coding} data: {exc}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise BodyTooLarge(
            f"the {coding} request body decompresses to more than the limit of {limit} bytes; "
            "raise it with --max-request-bytes"
        )
    if not decompressor.eof:
        raise InvalidArgument(f"the {coding} request body is truncated")
    return data


def parse_header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header as an int, None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or int(text) > body_size:
        raise InvalidArgument(
            f"{HEADER_LENGTH} is {value!r}; expected the byte length of the JSON header, "
            f"an integer from 0 to the body size ({body_size})"
        )
    return int(text)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON header + binary tensor data)."""
    raw: memoryview | None = None
    if header_length is None:
        # Numeric tensors straight into numpy when provably equal; else the general parse.
        document = jsonarrays.decode_kserve(body) or parse_json(body)
    else:
        document = parse_json(body[:header_length])
        # One copy of the binary section into a writable buffer; decoded arrays are views of
        # it. It exists, maybe empty, whenever the header is sent (tritonclient sends it for a
        # request whose only binary input is an empty tensor).
        raw = memoryview(bytearray(memoryview(body)[header_length:]))
    if not isinstance(document, dict):
        raise InvalidArgument(
            f"the inference request is a JSON {_json_name(document)}; expected an object "
            'with "inputs"'
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgument(f'"id" is a {_json_name(request_id)}; expected a string')
    parameters = _parameters(document, "the request")
    binary_output = _flag(parameters, "binary_data_output", "the request")

    specs = document.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidArgument('the request has no "inputs"; expected a non-empty list of tensors')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(specs):
        name, array, used = _decode_input(index, spec, raw, offset)
        if name in inputs:
            raise InvalidArgument(f"input {name!r} appears more than once in the request")
        inputs[name] = array
        offset += used
    unused = 0 if raw is None else len(raw) - offset
    if unused:
        raise InvalidArgument(
            f"the request carries {len(raw) if raw is not None else 0} bytes of binary tensor "
            f"data but its inputs' binary_data_size add up to {offset}"
        )
    return InferRequest(request_id, inputs, _requested_outputs(document), binary_output)


def _decode_input(
    index: int, spec: Any, raw: memoryview | None, offset: int
) -> tuple[str, np.ndarray, int]:
    """(name, array, bytes of binary data used) for the ``index``-th input of a request."""
    if not isinstance(spec, dict):
        raise InvalidArgument(
            f"inputs[{index}] is a JSON {_json_name(spec)}; expected an object with "
            '"name", "shape", "datatype" and "data"'
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f'inputs[{index}] has no "name"; expected a string')
    what = f"input {name!r}"
    datatype_name = spec.get("datatype")
    if not isinstance(datatype_name, str):
        raise InvalidArgument(f'{what} has no "datatype"; expected a name such as "FP32"')
    datatype = DataType.parse(datatype_name)
    shape = _shape(spec.get("shape"), what)
    parameters = _parameters(spec, what)
    _refuse_unsupported(parameters, what, ("shared_memory_region",))
    size = parameters.get("binary_data_size")
    if size is not None:
        if raw is None:
            raise InvalidArgument(
                f"{what} sets binary_data_size but the request has no binary data; send the "
                f"JSON header length in the {HEADER_LENGTH} HTTP header"
            )
        if "data" in spec:
            raise InvalidArgument(f'{what} has both "data" and binary_data_size; expected one')
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{what} has binary_data_size {size!r}; expected bytes >= 0")
        if offset + size > len(raw):
            raise InvalidArgument(
                f"{what} declares {size} bytes of binary data but only {len(raw) - offset} "
                "bytes are left in the request body"
            )
        array = decode_binary_tensor(name, datatype, shape, raw[offset : offset + size])
        return name, array, size
    if "data" not in spec:
        raise InvalidArgument(f'{what} has no "data" and no binary_data_size parameter')
    return name, decode_json_tensor(name, datatype, shape, spec["data"]), 0


def decode_json_tensor(
    name: str, datatype: DataType, shape: Sequence[int], data: Any
) -> np.ndarray:
    """A tensor from JSON ``data``, flat or nested in row-major order, of ``shape``.

    Every value must have the JSON type of ``datatype`` (numbers for FP*, integers in range for
    INT*/UINT*, booleans for BOOL, strings for BYTES); nested lists must be rectangular; the
    element count must equal the product of ``shape``.
    """
    what = f"input {name!r}"
    if isinstance(data, np.ndarray):  # decoded by jsonarrays, already checked against datatype
        array = data
    elif datatype is DataType.BYTES:
        array = _decode_json_bytes(what, data)
    else:
        array = _decode_json_numbers(what, datatype, data)
    return _reshape(what, array, shape, f"{array.size} values in its data")


def _decode_json_numbers(what: str, datatype: DataType, data: Any) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(data, dtype=datatype.numpy)
        if overflowed(array):
            raise OverflowError
    except OverflowError:
        raise InvalidArgument(
            f"{what} has a value out of range for {datatype.value}; expected "
            f"{_expected_json(datatype)}"
        ) from None
    except (ValueError, TypeError):
        _check_rectangular(what, data)
        raise InvalidArgument(
            f"{what} has data that is not {datatype.value}: "
            f"{_describe_types(_leaf_types_any(data))}; expected {_expected_json(datatype)}"
        ) from None
    # np.asarray converts too eagerly (strings "1.5" and booleans to floats, 1.7 to the int 1),
    # so check the JSON types of the leaves: a C-level pass, no per-element Python code.
    allowed = _allowed_types(datatype)
    found = _leaf_types(data, array.ndim)
    if not found <= allowed:
        raise InvalidArgument(
            f"{what} has data that is not {datatype.value}: "
            f"{_describe_types(found - allowed)}; expected {_expected_json(datatype)}"
        )
    return array


def _decode_json_bytes(what: str, data: Any) -> np.ndarray:
    # dtype=object keeps strings as references (no fixed-width copy sized by the longest) and
    # leaves a ragged level as list elements, which the type check below reports.
    objects = np.asarray(data, dtype=object)
    flat = objects.ravel().tolist()
    found = set(map(type, flat))
    if list in found:
        _check_rectangular(what, data)
    if not found <= {str}:
        raise InvalidArgument(
            f"{what} has data that is not BYTES: {_describe_types(found - {str})}; expected strings"
        )
    array = np.empty(len(flat), dtype=object)
    array[:] = [text.encode() for text in flat]
    return array.reshape(objects.shape)


def decode_binary_tensor(
    name: str, datatype: DataType, shape: Sequence[int], raw: memoryview | bytes
) -> np.ndarray:
    """A tensor of ``shape`` from its raw little-endian bytes (BYTES: length-prefixed)."""
    what = f"input {name!r}"
    count = math.prod(shape)
    if datatype is DataType.BYTES:
        elements = _split_bytes_elements(what, raw)
        array = np.empty(len(elements), dtype=object)
        array[:] = elements
        return _reshape(what, array, shape, f"{len(elements)} BYTES elements in its binary data")
    expected = count * datatype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{what} has {len(raw)} bytes of binary data; expected {expected} bytes for "
            f"{datatype.value} {format_shape(shape)} ({count} x {datatype.itemsize} bytes)"
        )
    little = datatype.numpy.newbyteorder("<")
    if count == 0:
        return np.empty(shape, dtype=datatype.numpy)
    array = np.frombuffer(raw, dtype=little, count=count)
    # A view is kept only where it is aligned and writable; otherwise copy (cheap, memcpy).
    if not (array.flags.aligned and array.flags.writeable and little.isnative):
        array = array.astype(datatype.numpy)
    return array.reshape(shape)


def _split_bytes_elements(what: str, raw: memoryview | bytes) -> list[bytes]:
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(
                f"{what} has a truncated BYTES length prefix at byte {offset}; expected a "
                "4-byte little-endian length before each element"
            )
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"{what} has a BYTES element of {length} bytes at byte {offset - 4} but only "
                f"{end - offset} bytes follow"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def _requested_outputs(document: dict[str, Any]) -> tuple[RequestedOutput, ...] | None:
    specs = document.get("outputs")
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise InvalidArgument(f'"outputs" is a JSON {_json_name(specs)}; expected a list')
    if not specs:
        return None
    outputs = []
    default = _flag(_parameters(document, "the request"), "binary_data_output", "the request")
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidArgument(f'outputs[{index}] has no "name"; expected {{"name": "..."}}')
        name = spec["name"]
        what = f"requested output {name!r}"
        parameters = _parameters(spec, what)
        _refuse_unsupported(parameters, what, ("shared_memory_region", "classification"))
        binary = _flag(parameters, "binary_data", what) if "binary_data" in parameters else default
        outputs.append(RequestedOutput(name, binary))
    return tuple(outputs)


# -- response -------------------------------------------------------------------------------


def encode_response(
    model: str,
    version: int,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary (else None).

    ``binary[name]`` says whether output ``name`` goes in the binary section.
    """
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        document["id"] = request_id
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        datatype = _output_datatype(name, array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype.value, "shape": array.shape}
        if binary.get(name, False):
            data = encode_binary_tensor(datatype, array)
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = encode_json_data(name, datatype, array)
        tensors.append(tensor)
    document["outputs"] = tensors
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_json_data(name: str, datatype: DataType, array: np.ndarray) -> Any:
    """Flat JSON-ready data: a native-endian 1-D array (orjson serialises it) or a str list."""
    if datatype is DataType.BYTES:
        try:
            return [_as_bytes(item).decode() for item in array.ravel().tolist()]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output {name!r} holds bytes that are not UTF-8 and cannot be sent as JSON; "
                'request it with parameters {"binary_data": true}'
            ) from None
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array).ravel()


def encode_binary_tensor(datatype: DataType, array: np.ndarray) -> bytes:
    """Raw little-endian bytes of ``array`` (BYTES: each element length-prefixed)."""
    if datatype is DataType.BYTES:
        parts: list[bytes] = []
        for item in array.ravel().tolist():
            data = _as_bytes(item)
            parts.append(len(data).to_bytes(4, "little"))
            parts.append(data)
        return b"".join(parts)
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


def _output_datatype(name: str, array: np.ndarray) -> DataType:
    try:
        return DataType.from_numpy(array.dtype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"output {name!r}: {exc.message}") from None


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return str(item).encode()


# -- helpers --------------------------------------------------------------------------------


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidArgument(
            f'{what} has "shape" {value!r}; expected a list of non-negative integers'
        )
    request_element_count(value, what)  # no more dimensions, or larger ones, than numpy takes
    return tuple(value)


def _reshape(what: str, array: np.ndarray, shape: Sequence[int], counted: str) -> np.ndarray:
    count = math.prod(shape)
    if array.size != count:
        raise InvalidArgument(
            f"{what} has {counted}; expected {count} for shape {format_shape(shape)}"
        )
    return array.reshape(shape)


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidArgument(
            f'"parameters" of {what} is a JSON {_json_name(parameters)}; expected an object'
        )
    return parameters


def _flag(parameters: Mapping[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidArgument(f"{key} of {what} is {value!r}; expected true or false")
    return value


def _refuse_unsupported(parameters: Mapping[str, Any], what: str, keys: Sequence[str]) -> None:
    for key in keys:
        if key in parameters:
            raise Unimplemented(f"{what} uses parameter {key!r}, which modelyard does not support")


def _check_rectangular(what: str, data: Any) -> None:
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
    if datatype.value.startswith("FP"):
        return _FLOAT_TYPES
    return _INT_TYPES


def _expected_json(datatype: DataType) -> str:
    if datatype is DataType.BOOL:
        return "JSON booleans"
    if datatype.value.startswith("FP"):
        return "JSON numbers"
    low, high = _int_range(datatype)
    return f"JSON integers from {low} to {high}"


def _int_range(datatype: DataType) -> tuple[int, int]:
    info = np.iinfo(datatype.numpy.name)
    return int(info.min), int(info.max)


def _describe_types(types: set[type]) -> str:
    names = sorted({_JSON_NAMES.get(t, t.__name__) for t in types})
    return "found " + ", ".join(names) + " values"


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)
