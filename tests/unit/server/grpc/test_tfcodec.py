"""TensorProto <-> numpy: round trips for every datatype, both encodings, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.errors import InvalidArgument
from modelyard.server.grpc.tfcodec import array_to_tensor, tensor_to_array
from modelyard.tensors import DataType
from modelyard.tfproto.generated import tensorflow_core_pb2 as core


@pytest.mark.parametrize("datatype", [d for d in DataType if d is not DataType.BYTES])
def test_round_trip_numbers(datatype: DataType) -> None:
    array = (np.arange(6) % 2 == 0) if datatype is DataType.BOOL else np.arange(6)
    array = array.astype(datatype.numpy).reshape(2, 3)
    decoded = tensor_to_array(array_to_tensor(array), "x")
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_round_trip_strings() -> None:
    array = np.array([[b"a", b"\xff"], [b"", b"xyz"]], dtype=object)
    tensor = array_to_tensor(array)
    assert list(tensor.string_val) == [b"a", b"\xff", b"", b"xyz"]
    np.testing.assert_array_equal(tensor_to_array(tensor, "s"), array)


def _typed(dtype: int, field: str, values: list[object], shape: list[int]) -> object:
    tensor = core.TensorProto(dtype=dtype)
    getattr(tensor, field).extend(values)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def test_typed_fields_and_one_value_fills() -> None:
    floats = tensor_to_array(_typed(core.DT_FLOAT, "float_val", [1.5, 2.5], [2]), "x")
    np.testing.assert_array_equal(floats, np.array([1.5, 2.5], np.float32))
    filled = tensor_to_array(_typed(core.DT_INT32, "int_val", [7], [2, 2]), "x")
    np.testing.assert_array_equal(filled, np.full((2, 2), 7, np.int32))
    half = np.array([1.0, -2.0], np.float16).view(np.uint16).tolist()
    halves = tensor_to_array(_typed(core.DT_HALF, "half_val", half, [2]), "h")
    narrow = tensor_to_array(_typed(core.DT_INT8, "int_val", [-128, 127], [2]), "i")
    np.testing.assert_array_equal(narrow, np.array([-128, 127], np.int8))
    assert narrow.dtype == np.int8
    np.testing.assert_array_equal(halves, np.array([1.0, -2.0], np.float16))


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        (
            _typed(core.DT_FLOAT, "float_val", [1.0, 2.0, 3.0], [2]),
            "has 3 values in float_val; expected 2 \\(or 1",
        ),
        (_typed(core.DT_FLOAT, "float_val", [], [2]), "has 0 values"),
        (_typed(core.DT_RESOURCE, "float_val", [], [0]), "DT_RESOURCE"),
        (_typed(core.DT_FLOAT, "float_val", [], [-1]), "must be >= 0"),
        # 8 bytes of message asking for 4 TiB: refused, not allocated
        (_typed(core.DT_FLOAT, "float_val", [1.0], [2**20, 2**20]), "4398046511104 bytes, more"),
        (_typed(core.DT_FLOAT, "float_val", [], [0, 2**30, 2**30]), "more than 2\\*\\*56"),
        (_typed(core.DT_FLOAT, "float_val", [], [1] * 33), "at most 32 are supported"),
        (_typed(core.DT_UINT8, "int_val", [-1], [1]), "outside the range of UINT8"),
        (_typed(core.DT_INT8, "int_val", [1, 128], [2]), "outside the range of INT8"),
    ],
)
def test_errors(tensor: object, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        tensor_to_array(tensor, "x")


def test_a_fill_up_to_the_limit_is_made() -> None:
    tensor = _typed(core.DT_FLOAT, "float_val", [2.0], [4, 256])
    np.testing.assert_array_equal(
        tensor_to_array(tensor, "x", max_fill_bytes=4096), np.full((4, 256), 2.0, np.float32)
    )
    with pytest.raises(InvalidArgument, match="4096 bytes, more than the 4095"):
        tensor_to_array(tensor, "x", max_fill_bytes=4095)
