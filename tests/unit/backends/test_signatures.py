from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.backends.signatures import check_unique_names, reconcile
from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType, Signature, TensorSpec

SOURCE = Path("/models/m/1/model.onnx")
FP32 = DataType.FP32


def sig(*inputs: tuple[str, tuple[int, ...]], out: tuple[int, ...] = (-1, 2)) -> Signature:
    return Signature(
        tuple(TensorSpec(name, FP32, shape) for name, shape in inputs),
        (TensorSpec("y", FP32, out),),
    )


def test_no_declared_signature_keeps_the_artifacts() -> None:
    artifact = sig(("x", (-1, 4)))
    assert reconcile(artifact, None, SOURCE) is artifact


@pytest.mark.parametrize(
    ("have", "want", "served"),
    [
        ((-1, 4), (-1, 4), (-1, 4)),
        ((-1, 4), (8, 4), (8, 4)),
        ((-1, 4), (-1, -1), (-1, 4)),
        ((2, -1), (-1, 3), (2, 3)),
    ],
)
def test_shapes_merge_to_the_more_specific(
    have: tuple[int, ...], want: tuple[int, ...], served: tuple[int, ...]
) -> None:
    merged = reconcile(sig(("x", have)), sig(("features", want)), SOURCE)
    assert merged.inputs == (TensorSpec("features", FP32, served),)


@pytest.mark.parametrize(("have", "want"), [((-1, 4), (-1, 5)), ((-1, 4), (-1, 4, 1)), ((3,), ())])
def test_disagreeing_shapes_are_rejected(have: tuple[int, ...], want: tuple[int, ...]) -> None:
    with pytest.raises(InvalidArgument, match="input 0 is declared in the config as") as info:
        reconcile(sig(("x", have)), sig(("x", want)), SOURCE)
    assert str(SOURCE) in info.value.message


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="repeated"):
        check_unique_names(sig(("x", (1,)), ("x", (2,))), SOURCE)
