"""The raw tensor layout of modelyard.codec: every datatype round-trips, wrong sizes are named."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.codec import decode_raw, encode_raw
from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType

NUMERIC = [d for d in DataType if d is not DataType.BYTES]


def _sample(datatype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype is DataType.BOOL:
        return rng.integers(0, 2, size=shape).astype(bool)
    dtype = datatype.numpy
    if dtype.kind == "f":
        return rng.standard_normal(size=shape).astype(dtype)
    info = np.iinfo(dtype.type)  # type: ignore[type-var]
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("datatype", NUMERIC, ids=lambda d: d.value)
@pytest.mark.parametrize("shape", [(2, 3), (0, 4), ()])
def test_numeric_round_trip(datatype: DataType, shape: tuple[int, ...]) -> None:
    array = _sample(datatype, shape)
    data = encode_raw(array, datatype)
    assert len(data) == array.size * datatype.itemsize
    decoded = decode_raw(data, datatype, shape, "input 'x'")
    assert decoded.dtype == datatype.numpy
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_layout_is_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int32)
    assert encode_raw(array.T, DataType.INT32) == np.array([1, 3, 2, 4], "<i4").tobytes()
    big_endian = np.array([1], dtype=">u2")
    assert encode_raw(big_endian, DataType.UINT16) == b"\x01\x00"


def test_bytes_round_trip() -> None:
    array = np.array([[b"", b"a"], [b"\x00\xff" * 100, "\u00e9".encode()]], dtype=object)
    data = encode_raw(array, DataType.BYTES)
    assert data[:4] == b"\x00\x00\x00\x00"
    assert data[4:9] == b"\x01\x00\x00\x00a"
    decoded = decode_raw(data, DataType.BYTES, (2, 2), "input 's'")
    assert decoded.dtype == object
    assert decoded.shape == (2, 2)
    assert decoded.tolist() == array.tolist()


def test_bytes_output_accepts_str_fixed_width_arrays_and_other_objects() -> None:
    assert (
        encode_raw(np.array(["hé"], dtype=object), DataType.BYTES) == b"\x03\x00\x00\x00h\xc3\xa9"
    )
    assert encode_raw(np.array([b"ab"], dtype="S2"), DataType.BYTES) == b"\x02\x00\x00\x00ab"
    # Any other element goes as the UTF-8 of its str(), as tritonclient sends it: 5 is b"5",
    # not five NUL bytes.
    assert encode_raw(np.array([5, 1.5], dtype=object), DataType.BYTES) == (
        b"\x01\x00\x00\x005\x03\x00\x00\x001.5"
    )


def test_wrong_byte_count_names_expected_and_received() -> None:
    data = np.zeros(5, dtype=np.float32).tobytes()
    with pytest.raises(InvalidArgument) as info:
        decode_raw(data, DataType.FP32, (2, 3), "input 'x'")
    message = info.value.message
    assert "'x'" in message
    assert "20 bytes" in message
    assert "expected 24 bytes" in message
    assert "[2, 3]" in message


@pytest.mark.parametrize(
    ("data", "count", "fragment"),
    [
        (b"\x01\x00\x00\x00a\x00\x00\x00", 2, "ends after 1 elements"),
        (b"\x01\x00\x00\x00a", 2, "too few for 2 elements"),
        (b"", 10**12, "too few for 1000000000000 elements"),
        (b"\x05\x00\x00\x00ab", 1, "of 5 bytes but only 2 bytes follow"),
        (b"\x01\x00\x00\x00a\x00", 1, "1 bytes of raw BYTES data after the 1 elements"),
        (b"\x01\x00", 1, "too few for 1 elements"),
    ],
)
def test_malformed_bytes_rejected(data: bytes, count: int, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        decode_raw(data, DataType.BYTES, (count,), "input 's'")


def test_negative_dimension_rejected() -> None:
    with pytest.raises(InvalidArgument, match=">= 0"):
        decode_raw(b"", DataType.FP32, (-1, 4), "input 'x'")
