"""TF Serving REST request/response shapes, checked against TF Serving's documented format."""

import numpy as np
import orjson
import pytest

from modelyard.errors import InvalidArgument, NotFound
from modelyard.server.dataplane import InferResult, ModelRef
from modelyard.server.http.tfserving import (
    decode_columnar,
    decode_instances,
    encode_outputs,
    encode_predictions,
    parse_path,
)
from modelyard.server.tfexamples import examples_from_json
from modelyard.tensors import DataType, Signature, TensorSpec

ONE_IN = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, 3)),),
    outputs=(TensorSpec("y", DataType.FP32, (-1, 2)),),
)
TWO_IN = Signature(
    inputs=(TensorSpec("a", DataType.FP32, (-1, 2)), TensorSpec("n", DataType.INT64, (-1,))),
    outputs=(TensorSpec("s", DataType.FP32, (-1, 2)), TensorSpec("k", DataType.INT64, (-1,))),
)


@pytest.mark.parametrize(
    ("path", "ref", "verb"),
    [
        ("m", ModelRef("m"), ""),
        ("m/versions/3", ModelRef("m", version=3), ""),
        ("m/labels/stable/metadata", ModelRef("m", label="stable"), "metadata"),
        ("m:predict", ModelRef("m"), ":predict"),
        ("m/versions/2:predict", ModelRef("m", version=2), ":predict"),
        ("m/labels/canary:predict", ModelRef("m", label="canary"), ":predict"),
    ],
)
def test_paths(path: str, ref: ModelRef, verb: str) -> None:
    assert parse_path(path) == (ref, verb)


def test_bad_paths() -> None:
    with pytest.raises(InvalidArgument, match="'x' is not a positive integer"):
        parse_path("m/versions/x")
    with pytest.raises(NotFound, match="expected /v1/models/<name>"):
        parse_path("m/extra/stuff/here")


def test_row_format_single_input_stacks_rows() -> None:
    inputs = decode_instances([[1, 2, 3], [4.5, 5, 6]], ONE_IN)
    assert inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(inputs["x"], [[1, 2, 3], [4.5, 5, 6]])


def test_row_format_named_inputs() -> None:
    inputs = decode_instances([{"a": [1, 2], "n": 7}, {"a": [3, 4], "n": 8}], TWO_IN)
    np.testing.assert_array_equal(inputs["a"], [[1, 2], [3, 4]])
    assert inputs["n"].dtype == np.int64
    np.testing.assert_array_equal(inputs["n"], [7, 8])


def test_row_format_missing_input_names_it_and_the_signature() -> None:
    with pytest.raises(InvalidArgument, match=r"instances\[1\] is missing input 'n'.*a: FP32"):
        decode_instances([{"a": [1, 2], "n": 7}, {"a": [3, 4]}], TWO_IN)


def test_ragged_rows_rejected() -> None:
    with pytest.raises(InvalidArgument, match="ragged"):
        decode_instances([[1, 2, 3], [4, 5]], ONE_IN)


def test_strings_for_numbers_rejected() -> None:
    with pytest.raises(
        InvalidArgument, match="not FP32: found string values; expected JSON numbers"
    ):
        decode_instances([["1", "2", "3"]], ONE_IN)


def test_floats_for_integers_rejected() -> None:
    with pytest.raises(
        InvalidArgument, match="not INT64: found number values; expected JSON integers"
    ):
        decode_columnar({"a": [[1, 2]], "n": [1.5]}, TWO_IN)


def test_integer_out_of_range_rejected() -> None:
    sig = Signature((TensorSpec("b", DataType.UINT8, (-1,)),), ONE_IN.outputs)
    with pytest.raises(InvalidArgument, match=r"300, outside the range of UINT8 \[0, 255\]"):
        decode_columnar([1, 300], sig)


@pytest.mark.parametrize(("datatype", "value"), [(DataType.FP32, 1e39), (DataType.FP16, 70000)])
def test_a_float_too_large_for_its_type_is_rejected_not_made_infinite(
    datatype: DataType, value: float
) -> None:
    sig = Signature((TensorSpec("f", datatype, (-1,)),), ONE_IN.outputs)
    with pytest.raises(InvalidArgument, match=f"a number too large for {datatype.value}"):
        decode_columnar([1.0, value], sig)
    assert decode_columnar([1.0, 65504.0], sig)["f"].tolist() == [1.0, 65504.0]


def test_columnar_bare_value_for_single_input() -> None:
    inputs = decode_columnar([[1, 2, 3]], ONE_IN)
    np.testing.assert_array_equal(inputs["x"], [[1, 2, 3]])


def test_predictions_single_output_is_a_list_of_rows() -> None:
    result = InferResult("m", 1, {"y": np.array([[1, 2], [3, 4]], dtype=np.float32)})
    assert orjson.loads(
        orjson.dumps(encode_predictions(result, ONE_IN), option=orjson.OPT_SERIALIZE_NUMPY)
    ) == [
        [1.0, 2.0],
        [3.0, 4.0],
    ]


def test_predictions_several_outputs_are_objects_per_row() -> None:
    result = InferResult(
        "m",
        1,
        {"s": np.array([[1, 2], [3, 4]], dtype=np.float32), "k": np.array([5, 6], dtype=np.int64)},
    )
    rows = orjson.loads(
        orjson.dumps(encode_predictions(result, TWO_IN), option=orjson.OPT_SERIALIZE_NUMPY)
    )
    assert rows == [{"s": [1.0, 2.0], "k": 5}, {"s": [3.0, 4.0], "k": 6}]


def test_columnar_outputs() -> None:
    one = InferResult("m", 1, {"y": np.array([[1, 2]], dtype=np.float32)})
    two = InferResult(
        "m", 1, {"s": np.array([[1, 2]], dtype=np.float32), "k": np.array([5], dtype=np.int64)}
    )

    def dump(value: object) -> object:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    assert dump(encode_outputs(one)) == [[1.0, 2.0]]
    assert dump(encode_outputs(two)) == {"s": [[1.0, 2.0]], "k": [5]}


@pytest.mark.parametrize("encoded", ["\u00e4", "not base64!", 12, ["YQ=="], {"b64": "YQ=="}])
def test_a_b64_value_that_is_not_base64_is_rejected(encoded: object) -> None:
    sig = Signature((TensorSpec("s", DataType.BYTES, (-1,)),), ONE_IN.outputs)
    with pytest.raises(InvalidArgument, match=r"input 's'.* has a b64 value that is not valid"):
        decode_instances([{"b64": encoded}], sig)
    with pytest.raises(InvalidArgument, match=r"examples\[0\].s has a b64 value that is not"):
        examples_from_json([{"s": {"b64": encoded}}])
    assert decode_instances([{"b64": "YQ=="}], sig)["s"].tolist() == [b"a"]
