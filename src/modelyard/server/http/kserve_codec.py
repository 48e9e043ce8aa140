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

The raw layout, the datatype names and the rules for JSON values are ``modelyard.codec``'s, which
every protocol shares; this module adds the KServe REST document around them.

Every function here is pure: it raises ``InvalidArgument`` (or ``Unimplemented`` /
``BodyTooLarge``) with a message that names the tensor, what was wrong and what was expected,
and never returns an array that disagrees with what the client declared. Datatypes are taken as
the client declares them; checking them against the model's signature is the data plane's job.

Decoded arrays are C-contiguous, native-endian, writable and own (or share) no buffer the caller
reuses. BYTES tensors decode to object arrays of ``bytes``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelyard import codec
from modelyard.codec import JSON_NAMES
from modelyard.errors import InvalidArgument, Unimplemented
from modelyard.server.http import jsonarrays
from modelyard.server.http.common import BodyTooLarge, parse_json
from modelyard.tensors import DataType

HEADER_LENGTH = "Inference-Header-Content-Length"


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
        fast = jsonarrays.decode_kserve(body) if jsonarrays.use_fast_path(body) else None
        document = fast or parse_json(body)
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
    return InferRequest(
        request_id, inputs, _requested_outputs(document, binary_output), binary_output
    )


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
    datatype = codec.kserve_datatype(datatype_name, what)
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
        array = codec.json_strings(what, data)
    else:
        array = codec.json_numbers(what, datatype, data)
    codec.check_count(what, array.size, "its data", shape)
    return array.reshape(shape)


def decode_binary_tensor(
    name: str, datatype: DataType, shape: Sequence[int], raw: memoryview | bytes
) -> np.ndarray:
    """A tensor of ``shape`` from its raw little-endian bytes (BYTES: length-prefixed)."""
    return codec.decode_raw(raw, datatype, shape, f"input {name!r}")


def _requested_outputs(
    document: dict[str, Any], default: bool
) -> tuple[RequestedOutput, ...] | None:
    """The outputs the request names (None: it names none); ``default``: the request's
    ``binary_data_output``, for an output that does not say."""
    specs = document.get("outputs")
    if specs is None:
        return None
    if not isinstance(specs, list):
        raise InvalidArgument(f'"outputs" is a JSON {_json_name(specs)}; expected a list')
    if not specs:
        return None
    outputs = []
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
    chunks: list[memoryview | bytes] = []
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
            return [codec.bytes_element(item).decode() for item in array.ravel().tolist()]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output {name!r} holds bytes that are not UTF-8 and cannot be sent as JSON; "
                'request it with parameters {"binary_data": true}'
            ) from None
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array).ravel()


def encode_binary_tensor(datatype: DataType, array: np.ndarray) -> memoryview | bytes:
    """Raw little-endian bytes of ``array`` (BYTES: each element length-prefixed); a view of
    ``array`` when it is contiguous and little-endian already."""
    return codec.raw_buffer(array, datatype)


def _output_datatype(name: str, array: np.ndarray) -> DataType:
    try:
        return DataType.from_numpy(array.dtype)
    except InvalidArgument as exc:
        raise InvalidArgument(f"output {name!r}: {exc.message}") from None


# -- helpers --------------------------------------------------------------------------------


def _shape(value: Any, what: str) -> tuple[int, ...]:
    # type() is int: a bool is not a dimension (nor is an int subclass, which JSON never makes).
    if type(value) is not list or not all(type(d) is int for d in value):
        raise InvalidArgument(
            f'{what} has "shape" {value!r}; expected a list of non-negative integers'
        )
    # A negative dimension, or more or larger ones than numpy takes: the message every
    # protocol gives.
    codec.element_count(value, what)
    return tuple(value)


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
    if not parameters:  # most tensors have none
        return
    for key in keys:
        if key in parameters:
            raise Unimplemented(f"{what} uses parameter {key!r}, which modelyard does not support")


def _json_name(value: Any) -> str:
    return JSON_NAMES.get(type(value), type(value).__name__)
