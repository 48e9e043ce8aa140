import numpy as np
import pytest

from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, 4)),),
    outputs=(TensorSpec("y", DataType.FP32, (-1, 3)),),
)


def test_datatype_names_round_trip() -> None:
    for dtype in DataType:
        assert DataType.parse(dtype.value) is dtype
        assert DataType.parse(dtype.tf_name) is dtype
    with pytest.raises(InvalidArgument, match="unknown datatype 'FLOAT'; expected one of BOOL"):
        DataType.parse("FLOAT")


def test_good_input_passes() -> None:
    SIG.validate_inputs({"x": np.zeros((5, 4), dtype=np.float32)})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"z": np.zeros((1, 4), np.float32)},
            r"unknown input 'z'; the model expects x: FP32 \[\?, 4\]",
        ),
        ({}, r"missing input 'x'; the model expects x: FP32 \[\?, 4\]"),
        ({"x": np.zeros((1, 4), np.float64)}, r"datatype FP64; expected x: FP32 \[\?, 4\]"),
        ({"x": np.zeros((1, 5), np.float32)}, r"shape \[1, 5\]; expected x: FP32 \[\?, 4\]"),
        ({"x": np.zeros((4,), np.float32)}, r"shape \[4\]; expected x: FP32 \[\?, 4\]"),
    ],
)
def test_bad_inputs_name_what_was_expected(inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        SIG.validate_inputs(inputs)
