"""The KServe v2 REST codec: JSON and binary tensors both ways, and every way a body can be bad."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import orjson
import pytest

from modelyard.errors import InvalidArgument, Unimplemented
from modelyard.server.http import jsonarrays
from modelyard.server.http.common import BodyTooLarge
from modelyard.server.http.kserve_codec import (
    decode_binary_tensor,
    decode_json_tensor,
    decode_request,
    decompress,
    encode_binary_tensor,
    encode_json_data,
    encode_response,
    parse_header_length,
)
from modelyard.tensors import DataType

NUMERIC = [d for d in DataType if d is not DataType.BYTES]


def _sample(datatype: DataType, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype is DataType.BOOL:
        return rng.random(shape) > 0.5
    if datatype is DataType.BYTES:
        words = np.array([b"a", b"", "é".encode(), b"long word", b"x", b"yz"], dtype=object)
        return words[: int(np.prod(shape))].reshape(shape)
    dtype = datatype.numpy
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype.name)
    # Include the extremes: they are where a wrong cast would show.
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values.flat[0], values.flat[-1] = info.min, info.max
    return values


def _json_roundtrip(value: Any) -> Any:
    """What a JSON client sees and sends back (orjson output parsed by the stdlib)."""
    import orjson

    return json.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def _binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), len(head)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda d: d.value)
def test_every_datatype_round_trips_through_json(datatype: DataType) -> None:
    array = _sample(datatype)
    data = _json_roundtrip(encode_json_data("y", datatype, array))
    decoded = decode_json_tensor("x", datatype, array.shape, data)
    assert decoded.dtype == datatype.numpy
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", list(DataType), ids=lambda d: d.value)
def test_every_datatype_round_trips_through_binary(datatype: DataType) -> None:
    array = _sample(datatype)
    raw = encode_binary_tensor(datatype, array)
    if datatype is not DataType.BYTES:
        assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()
    decoded = decode_binary_tensor("x", datatype, array.shape, raw)
    assert decoded.dtype == datatype.numpy
    np.testing.assert_array_equal(decoded, array)


def test_bytes_binary_layout_is_4_byte_little_endian_length_prefixed() -> None:
    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    raw = encode_binary_tensor(DataType.BYTES, array)
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"


def test_bytes_outputs_from_str_arrays_encode_as_utf8() -> None:
    array = np.array(["hé", "x"])
    assert encode_json_data("y", DataType.BYTES, array) == ["hé", "x"]
    assert (
        encode_binary_tensor(DataType.BYTES, array) == b"\x03\x00\x00\x00h\xc3\xa9\x01\x00\x00\x00x"
    )


def test_nested_and_flat_json_data_give_the_same_tensor() -> None:
    flat = decode_json_tensor("x", DataType.FP32, (2, 3), [1, 2, 3, 4, 5, 6])
    nested = decode_json_tensor("x", DataType.FP32, (2, 3), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.float32
    assert flat.shape == (2, 3)
    strings = decode_json_tensor("s", DataType.BYTES, (2, 1), [["a"], ["b"]])
    assert strings.tolist() == [[b"a"], [b"b"]]


def test_decoded_binary_arrays_are_writable_even_when_unaligned() -> None:
    one = np.array([7], dtype=np.int8)
    two = np.array([1.5, 2.5], dtype=np.float32)
    header = {
        "inputs": [
            {"name": "a", "shape": [1], "datatype": "INT8", "parameters": {"binary_data_size": 1}},
            {"name": "b", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
        ]
    }
    body, length = _binary_body(header, one.tobytes(), two.tobytes())
    request = decode_request(body, length)
    for array in request.inputs.values():
        assert array.flags.writeable
        assert array.flags.aligned
    np.testing.assert_array_equal(request.inputs["b"], two)


def test_empty_binary_tensor_with_an_empty_binary_section() -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [0, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 0},
            }
        ]
    }
    body, length = _binary_body(header)
    assert decode_request(body, length).inputs["x"].shape == (0, 4)


def test_request_mixing_json_and_binary_inputs_in_order() -> None:
    header = {
        "id": "42",
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [[1, 2]]},
            {
                "name": "c",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 12},
            },
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }
    a = np.array([1, 2], dtype=np.float32).tobytes()
    c = encode_binary_tensor(DataType.BYTES, np.array([b"hi", b"yo"], dtype=object))
    body, length = _binary_body(header, a, bytes(c))
    request = decode_request(body, length)
    assert request.id == "42"
    assert list(request.inputs) == ["a", "b", "c"]
    assert request.inputs["c"].tolist() == [b"hi", b"yo"]
    assert request.output_names == ["y", "z"]
    assert request.wants_binary("y")
    assert not request.wants_binary("z")


def test_binary_data_output_applies_to_outputs_that_do_not_say() -> None:
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
    }
    request = decode_request(json.dumps(header).encode())
    assert request.outputs is None
    assert request.wants_binary("anything")
    header["outputs"] = [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}]
    request = decode_request(json.dumps(header).encode())
    assert request.wants_binary("y")
    assert not request.wants_binary("z")


def test_response_json_only_is_plain_json() -> None:
    body, length = encode_response(
        "m", 3, "id-1", {"y": np.array([[1.5, 2.0]], dtype=np.float32)}, {"y": False}
    )
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "id": "id-1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}],
    }


def test_response_with_binary_outputs_puts_their_bytes_after_the_header() -> None:
    y = np.arange(6, dtype=np.float16).reshape(2, 3)
    z = np.array([b"q"], dtype=object)
    w = np.array([True, False])
    body, length = encode_response(
        "m", 1, None, {"y": y, "w": w, "z": z}, {"y": True, "w": False, "z": True}
    )
    assert length is not None
    header = json.loads(body[:length])
    y_out, w_out, z_out = header["outputs"]
    assert y_out == {
        "name": "y",
        "datatype": "FP16",
        "shape": [2, 3],
        "parameters": {"binary_data_size": 12},
    }
    assert w_out["data"] == [True, False]
    assert z_out["parameters"] == {"binary_data_size": 5}
    assert body[length:] == y.tobytes() + b"\x01\x00\x00\x00q"


# -- bad input ------------------------------------------------------------------------------


def _error(call: Any, *args: Any) -> str:
    with pytest.raises(InvalidArgument) as info:
        call(*args)
    return info.value.message


def test_ragged_nested_lists_are_rejected() -> None:
    message = _error(decode_json_tensor, "x", DataType.FP32, (2, 2), [[1, 2], [3]])
    assert "'x'" in message
    assert "ragged" in message
    assert "lengths [1, 2]" in message
    message = _error(decode_json_tensor, "x", DataType.FP32, (2,), [[1, 2], 3])
    assert "ragged" in message
    message = _error(decode_json_tensor, "s", DataType.BYTES, (2, 2), [["a", "b"], ["c"]])
    assert "'s'" in message
    assert "ragged" in message


@pytest.mark.parametrize("datatype", [DataType.FP32, DataType.INT32, DataType.BYTES])
def test_element_count_must_match_the_shape(datatype: DataType) -> None:
    data: list[Any] = ["a", "b", "c"] if datatype is DataType.BYTES else [1, 2, 3]
    message = _error(decode_json_tensor, "x", datatype, (2, 2), data)
    assert "input 'x' has 3 values" in message
    assert "expected 4 for shape [2, 2]" in message


@pytest.mark.parametrize(
    ("datatype", "data", "found"),
    [
        (DataType.FP32, ["1.5", "2"], "string"),
        (DataType.FP32, ["abc"], "string"),
        (DataType.FP32, [True, 1.0], "boolean"),
        (DataType.FP32, [None, 1.0], "null"),
        (DataType.FP64, [{"a": 1}], "object"),
        (DataType.INT32, [1.7, 2], "number"),
        (DataType.INT64, ["3"], "string"),
        (DataType.BOOL, [1, 0], "integer"),
        (DataType.BOOL, ["true"], "string"),
        (DataType.BYTES, [1, "a"], "integer"),
    ],
)
def test_values_of_the_wrong_json_type_are_rejected(
    datatype: DataType, data: list[Any], found: str
) -> None:
    message = _error(decode_json_tensor, "x", datatype, (len(data),), data)
    assert f"input 'x' has data that is not {datatype.value}" in message
    assert f"found {found}" in message
    assert "expected" in message


@pytest.mark.parametrize(
    ("datatype", "value"),
    [(DataType.UINT8, 256), (DataType.UINT8, -1), (DataType.INT8, 128), (DataType.INT64, 2**63)],
)
def test_integers_out_of_range_are_rejected(datatype: DataType, value: int) -> None:
    message = _error(decode_json_tensor, "x", datatype, (1,), [value])
    assert f"holds {value}, outside the range of {datatype.value} [" in message


@pytest.mark.parametrize(("datatype", "value"), [(DataType.FP32, 1e39), (DataType.FP16, 70000.0)])
def test_a_float_too_large_for_its_type_is_rejected_not_made_infinite(
    datatype: DataType, value: float
) -> None:
    message = _error(decode_json_tensor, "x", datatype, (2,), [1.0, value])
    assert f"holds a number too large for {datatype.value}" in message
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": datatype.value,
                                     "data": [1.0, value]}]})  # fmt: skip
    assert jsonarrays.decode_kserve(body) is None  # the fast path leaves it to the general one


def test_binary_size_mismatch_names_expected_and_actual_bytes() -> None:
    message = _error(decode_binary_tensor, "x", DataType.FP32, (2, 3), b"\x00" * 20)
    assert message == (
        "input 'x' has 20 bytes of raw data; expected 24 bytes for FP32 [2, 3] (6 x 4 bytes)"
    )


def test_truncated_bytes_elements_are_rejected() -> None:
    message = _error(decode_binary_tensor, "s", DataType.BYTES, (1,), b"\x05\x00\x00\x00ab")
    assert "5 bytes but only 2 bytes follow" in message
    message = _error(decode_binary_tensor, "s", DataType.BYTES, (1,), b"\x01\x00")
    assert "2 bytes of raw BYTES data, too few for 1 elements" in message
    message = _error(
        decode_binary_tensor, "s", DataType.BYTES, (2,), b"\x01\x00\x00\x00a\x00\x00\x00"
    )
    assert "ends after 1 elements; expected 2" in message


def test_binary_section_sizes_must_add_up() -> None:
    header = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
        ]
    }
    body, length = _binary_body(header, b"\x00" * 12)
    assert "12 bytes of binary tensor data" in _error(decode_request, body, length)
    body, length = _binary_body(header, b"\x00" * 4)
    assert "only 4 bytes are left" in _error(decode_request, body, length)
    body = json.dumps(header).encode()
    assert "Inference-Header-Content-Length" in _error(decode_request, body, None)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([1, 2], "JSON array; expected an object"),
        ({}, 'no "inputs"'),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, 'no "name"'),
        ({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, 'no "datatype"'),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]},
            "input 'x' has unsupported datatype 'FP99'; expected one of BOOL",
        ),
        (
            {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]},
            "input 'x' has shape [-1]; dimensions of a request must be >= 0",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, 'no "data"'),
        (
            {
                "inputs": [
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            "more than once",
        ),
        (
            {
                "parameters": {"binary_data_output": "yes"},
                "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
            },
            "expected true or false",
        ),
    ],
)
def test_malformed_inference_headers_are_rejected(document: Any, expected: str) -> None:
    assert expected in _error(decode_request, json.dumps(document).encode())


def test_malformed_json_is_rejected() -> None:
    assert "not valid JSON" in _error(decode_request, b'{"inputs": [')


def test_shared_memory_and_classification_are_refused_as_unimplemented() -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [1],
                "datatype": "FP32",
                "parameters": {"shared_memory_region": "r"},
            }
        ]
    }
    with pytest.raises(Unimplemented, match="shared_memory_region"):
        decode_request(json.dumps(header).encode())


def test_non_utf8_bytes_output_needs_binary() -> None:
    message = _error(encode_json_data, "y", DataType.BYTES, np.array([b"\xff"], dtype=object))
    assert "not UTF-8" in message
    assert "binary_data" in message


# -- transport ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", None, "identity"])
def test_compressed_bodies_decompress(encoding: str | None) -> None:
    body = b'{"inputs": []}' * 100
    if encoding == "gzip":
        packed = gzip.compress(body)
    elif encoding == "deflate":
        packed = zlib.compress(body)
    else:
        packed = body
    assert decompress(packed, encoding, limit=10_000) == body


def test_decompression_is_bounded_by_the_body_limit() -> None:
    bomb = gzip.compress(b"\x00" * 1_000_000)
    with pytest.raises(BodyTooLarge, match="more than the limit of 1000 bytes"):
        decompress(bomb, "gzip", limit=1000)
    assert "not valid gzip" in _error(decompress, b"nope", "gzip", 1000)
    assert "unsupported Content-Encoding 'br'" in _error(decompress, b"x", "br", 1000)


def test_header_length_must_be_an_integer_within_the_body() -> None:
    assert parse_header_length(None, 10) is None
    assert parse_header_length("4", 10) == 4
    assert "from 0 to the body size (10)" in _error(parse_header_length, "11", 10)
    assert "expected the byte length" in _error(parse_header_length, "x", 10)
