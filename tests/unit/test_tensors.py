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


TWO = Signature(
    inputs=(
        TensorSpec("a", DataType.FP32, (-1, 2, -1)),
        TensorSpec("b", DataType.BYTES, (-1,)),
        TensorSpec("c", DataType.INT64, ()),
    ),
    outputs=(),
)
A = np.zeros((1, 2, 7), np.float32)
B = np.array([b"x"], object)
C = np.array(3, np.int64)


@pytest.mark.parametrize(
    "inputs",
    [
        {"a": A, "b": B, "c": C},
        # Equal to the signature's dtype but not the usual object: a big-endian array.
        {"a": np.zeros((3, 2, 0), ">f4"), "b": np.array(["s"]), "c": np.zeros((), np.int64)},
    ],
)
def test_every_valid_request_passes_whichever_way_it_is_checked(
    inputs: dict[str, np.ndarray],
) -> None:
    TWO.validate_inputs(inputs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"a": A}, r"missing input 'b', 'c'"),
        ({"a": A, "b": B, "d": C}, r"unknown input 'd'"),
        (
            {"a": np.zeros((1, 3, 1), np.float32), "b": B, "c": C},
            r"input 'a' has shape \[1, 3, 1\]; expected a: FP32 \[\?, 2, \?\]",
        ),
        ({"a": np.zeros((1, 2), np.float32), "b": B, "c": C}, r"input 'a' has shape \[1, 2\]"),
        ({"a": A.astype(np.float64), "b": B, "c": C}, r"input 'a' has datatype FP64"),
        ({"a": A, "b": np.zeros(1), "c": C}, r"input 'b' has datatype FP64"),
        ({"a": A, "b": B, "c": np.zeros(1, np.int64)}, r"input 'c' has shape \[1\]"),
    ],
)
def test_a_bad_request_gets_the_same_message_after_good_ones(
    inputs: dict[str, np.ndarray], message: str
) -> None:
    TWO.validate_inputs({"a": A, "b": B, "c": C})
    with pytest.raises(InvalidArgument, match=message):
        TWO.validate_inputs(inputs)


def test_a_signature_whose_input_names_repeat_still_refuses_unknown_inputs() -> None:
    twice = Signature(
        inputs=(TensorSpec("x", DataType.FP32, (-1,)), TensorSpec("x", DataType.FP32, (-1,))),
        outputs=(),
    )
    with pytest.raises(InvalidArgument, match="unknown input 'z'"):
        twice.validate_inputs({"x": np.zeros(1, np.float32), "z": np.zeros(1, np.float32)})


def test_a_signature_checks_the_same_after_a_round_trip_through_pickle() -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(SIG))
    assert copy == SIG
    assert hash(copy) == hash(SIG)
    assert repr(copy) == repr(SIG)
    copy.validate_inputs({"x": np.zeros((5, 4), dtype=np.float32)})
    with pytest.raises(InvalidArgument, match=r"shape \[1, 5\]"):
        copy.validate_inputs({"x": np.zeros((1, 5), np.float32)})
