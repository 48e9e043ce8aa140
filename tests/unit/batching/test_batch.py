"""Pure batch arithmetic: keys, row counts, padding, joining and splitting."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.batching.batch import batch_key, count_rows, join, padded_size, split
from modelyard.errors import Internal


def _x(rows: int, width: int = 2, start: float = 0) -> np.ndarray:
    return (np.arange(rows * width, dtype=np.float32) + start).reshape(rows, width)


def test_keys_differ_by_trailing_shape_and_dtype_not_by_rows() -> None:
    assert batch_key({"x": _x(1)}, ["x"]) == batch_key({"x": _x(5)}, ["x"])
    assert batch_key({"x": _x(1)}, ["x"]) != batch_key({"x": _x(1, width=3)}, ["x"])
    assert batch_key({"x": _x(1)}, ["x"]) != batch_key({"x": _x(1).astype(np.float64)}, ["x"])


def test_rows_are_the_shared_first_dimension() -> None:
    assert count_rows({"a": _x(3), "b": _x(3, width=5)}) == 3
    assert count_rows({"a": _x(3), "b": _x(2)}) is None
    assert count_rows({"a": np.float32(1.0) * np.ones(())}) is None


@pytest.mark.parametrize(
    ("rows", "allowed", "expected"),
    [(3, None, 3), (3, (2, 4, 8), 4), (4, (2, 4, 8), 4), (1, (2, 4, 8), 2), (9, (2, 4, 8), 9)],
)
def test_padded_size_is_the_next_allowed_size(
    rows: int, allowed: tuple[int, ...] | None, expected: int
) -> None:
    assert padded_size(rows, allowed) == expected


def test_join_concatenates_in_order_and_pads_with_the_first_row() -> None:
    parts = [{"x": _x(1, start=0)}, {"x": _x(2, start=100)}]
    joined = join(parts, ["x"], 5)["x"]
    expected = np.concatenate([_x(1, start=0), _x(2, start=100), _x(1), _x(1)])
    assert np.array_equal(joined, expected)


def test_join_of_one_unpadded_request_does_not_copy() -> None:
    x = _x(3)
    assert join([{"x": x}], ["x"], 3)["x"] is x


def test_split_hands_each_request_its_rows_as_views_and_drops_padding() -> None:
    y = _x(6)
    parts = split({"y": y}, [1, 3, 0], 6)
    assert [p["y"].shape[0] for p in parts] == [1, 3, 0]
    assert np.array_equal(parts[1]["y"], y[1:4])
    assert np.shares_memory(parts[1]["y"], y)


def test_split_refuses_outputs_that_are_not_row_aligned() -> None:
    with pytest.raises(Internal, match="one row per input row"):
        split({"y": _x(3)}, [2, 2], 4)
    with pytest.raises(Internal, match="scalar"):
        split({"y": np.ones((), dtype=np.float32)}, [1], 1)
