"""The fast numeric JSON path either builds exactly what the general path builds, or declines.

The general path (orjson, then ``decode_instances`` / ``decode_columnar``) is the reference: for
any body, the fast path must return None, or arrays equal in dtype, shape and value to the
general path's; and when the general path refuses a body (400) the fast path must decline it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.errors import InvalidArgument, ModelyardError, NotFound
from modelyard.server.http import jsonarrays
from modelyard.server.http import kserve_codec as codec
from modelyard.server.http.tfserving import decode_columnar, decode_instances
from modelyard.tensors import DEFAULT_SIGNATURE, DataType, Signature, TensorSpec

pytestmark = pytest.mark.skipif(jsonarrays.simdjson is None, reason="needs pysimdjson")

EXAMPLES = 200 if os.environ.get("CI") else 1000
"""Examples per property test here: 1,000 on a developer's machine, 200 in CI (``CI`` set), where
the whole suite must finish in 10 minutes; either way every property runs on every test run."""

DTYPES = [DataType.FP32, DataType.FP64, DataType.FP16, DataType.INT64, DataType.INT8]
DTYPES += [DataType.UINT8, DataType.BOOL, DataType.BYTES]


def signature(dtype: DataType, inputs: int = 1) -> Signature:
    specs = tuple(TensorSpec(f"in{i}", dtype, (-1, -1)) for i in range(inputs))
    return Signature(inputs=specs, outputs=(TensorSpec("y", DataType.FP32, (-1,)),))


def general(body: bytes, sig: Signature) -> dict[str, np.ndarray] | None:
    """What the general path builds, or None where it answers 400."""
    doc = orjson.loads(body)
    try:
        if "instances" in doc:
            return decode_instances(doc["instances"], sig)
        return decode_columnar(doc["inputs"], sig)
    except InvalidArgument:
        return None


def fast(body: bytes, sig: Signature) -> dict[str, np.ndarray] | None:
    decoded = jsonarrays.decode_predict(body, lambda name: sig)
    return None if decoded is None else decoded.inputs


def assert_agrees(body: bytes, sig: Signature) -> None:
    got = fast(body, sig)
    if got is None:
        return
    want = general(body, sig)
    assert want is not None, f"fast path accepted what the general path refuses: {body[:200]!r}"
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])


numbers = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
leaves = st.one_of(
    numbers,
    numbers,
    numbers,
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.just([]),
    st.lists(numbers, min_size=1, max_size=2),
)


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    """Mostly rectangular nested lists, sometimes with one element swapped for a wrong one."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    flat = draw(st.lists(numbers, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    value: Any = np.array(flat, dtype=object).reshape(shape).tolist()
    corruption = draw(st.sampled_from(["none", "leaf", "length"]))
    if corruption == "leaf":  # one number swapped for something else
        node = value
        for _ in range(len(shape) - 1):
            node = node[draw(st.integers(0, len(node) - 1))]
        node[draw(st.integers(0, len(node) - 1))] = draw(leaves)
    elif corruption == "length":  # one list, at any depth, one element longer
        node = value
        for _ in range(draw(st.integers(0, len(shape) - 1))):
            node = node[draw(st.integers(0, len(node) - 1))]
        node.append(draw(leaves))
    return value


@given(
    value=tensors(),
    dtype=st.sampled_from(DTYPES),
    key=st.sampled_from(["instances", "inputs"]),
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_path_agrees_with_the_general_path_or_declines(
    value: Any, dtype: DataType, key: str
) -> None:
    assert_agrees(orjson.dumps({key: value}), signature(dtype))


def small(body: bytes, sig: Signature) -> dict[str, np.ndarray] | None:
    """What ``small_floats`` builds for a one-member body, None where it declines."""
    doc = orjson.loads(body)
    ((key, value),) = doc.items()
    spec = sig.inputs[0]
    array = jsonarrays.small_floats(body, key, value, spec.datatype)
    return None if array is None else {spec.name: array}


@given(
    value=tensors(),
    dtype=st.sampled_from(DTYPES),
    key=st.sampled_from(["instances", "inputs", "input"]),
    spaced=st.booleans(),
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_small_body_path_agrees_with_the_general_path_or_declines(
    value: Any, dtype: DataType, key: str, spaced: bool
) -> None:
    body = json.dumps({key: value}).encode() if spaced else orjson.dumps({key: value})
    got = small(body, signature(dtype))
    if got is None:
        return
    assert key != "input", "small_floats took a body that is neither 'instances' nor 'inputs'"
    want = general(body, signature(dtype))
    assert want is not None, f"small_floats accepted what the general path refuses: {body!r}"
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1.5, true]]}', b'{"instances": [[1.5, null]]}',
        b'{"instances": [[1.5, "2"]]}', b'{"inputs": [[1e39, 2]]}', b'{"inputs": [[1, [2]]]}',
        b'{"instances": [{}]}', b'{"instances": []}', b'{"instances": [[1, 2], [3]]}',
    ],
)  # fmt: skip
def test_small_bodies_the_general_path_refuses_are_declined(body: bytes) -> None:
    assert small(body, signature(DataType.FP32)) is None
    assert general(body, signature(DataType.FP32)) is None


def test_a_tiny_model_request_takes_the_small_body_path_with_exact_values() -> None:
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    got = small(
        orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY), signature(DataType.FP32)
    )
    assert got is not None
    assert got["in0"].dtype == np.float32
    np.testing.assert_array_equal(got["in0"], x)


def test_a_typical_request_takes_the_fast_path_with_exact_values() -> None:
    x = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)
    body = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
    decoded = jsonarrays.decode_predict(body, lambda name: signature(DataType.FP32))
    assert decoded is not None
    assert (decoded.signature_name, decoded.key) == (DEFAULT_SIGNATURE, "instances")
    np.testing.assert_array_equal(decoded.inputs["in0"], x)
    assert_agrees(body, signature(DataType.FP32))


def test_a_body_after_a_failed_one_still_takes_the_fast_path_with_its_own_values() -> None:
    """The loop's parser is reused from body to body; an error whose traceback still holds
    the previous document (simdjson then refuses to reuse the parser) must not make the next
    body decline, nor give it the previous body's values."""
    first = np.arange(8 * 1024, dtype=np.float32).reshape(8, 1024)
    second = -first
    bodies = [
        orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY) for x in (first, second)
    ]

    def unknown(name: str) -> Signature:
        raise NotFound(f"no signature {name!r}")

    with pytest.raises(NotFound) as kept:  # ``kept`` holds the traceback, and the document
        jsonarrays.decode_predict(bodies[0], unknown)
    assert kept.value.__traceback__ is not None
    for body, x in zip(bodies, (first, second), strict=True):
        decoded = jsonarrays.decode_predict(body, lambda name: signature(DataType.FP32))
        assert decoded is not None
        np.testing.assert_array_equal(decoded.inputs["in0"], x)
        assert decoded.inputs["in0"].dtype == np.float32


def test_bodies_over_the_kept_parsers_size_take_the_fast_path_with_exact_values() -> None:
    """A body larger than ``REUSED_PARSER_BYTES`` gets a parser of its own (the kept one does
    not grow to its size); a small body after it still decodes to its own values."""
    large = np.random.default_rng(1).standard_normal((24, 8192)).astype(np.float32)
    small = np.random.default_rng(2).standard_normal((8, 1024)).astype(np.float32)
    for x in (small, large, small):
        body = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        assert (len(body) > jsonarrays.REUSED_PARSER_BYTES) == (x is large)
        decoded = jsonarrays.decode_predict(body, lambda name: signature(DataType.FP32))
        assert decoded is not None
        np.testing.assert_array_equal(decoded.inputs["in0"], x)


@pytest.mark.parametrize(
    "body", [b"", b"[", b"[[]]", b'{"a": "[", "b": [[1], [2]]}', bytes(range(256)) * 3]
)
def test_open_brackets_are_counted_as_bytes_count_counts_them(body: bytes) -> None:
    assert jsonarrays.count_open_brackets(body) == body.count(b"[")


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2], [3]]}',  # ragged
        b'{"instances": [[1, 2], [3, 4, 5], [6]]}',  # ragged with the right total
        b'{"instances": [[1, 2], [[3], 4]]}',  # a leaf that is an array
        b'{"instances": [[1, 2], [[], 3]]}',
        b'{"instances": [[1, "2"], [3, 4]]}',  # a string
        b'{"instances": [[1, true], [3, 4]]}',  # a boolean
        b'{"instances": [[1, null], [3, 4]]}',
        b'{"instances": []}',
        b'{"instances": [[1, 2]], "instances": [[3, 4]]}',  # duplicate key
        b'{"instances": [[1, 2]], "inputs": [[3, 4]]}',  # both
        b'{"instances": [{"in0": [1, 2]}]}',  # named instance
        b'{"inputs": {"in0": [[1, 2]]}}',  # named columnar
        b'{"instances": [[1, 2]], "signature_name": "[x]"}',  # a [ in a string
        b'{"instances": [[1, 2]]',  # not JSON
        b'{"instances": [[1, 2]], "extra": 1}',
    ],
)
def test_bodies_the_fast_path_must_leave_to_the_general_path(body: bytes) -> None:
    assert fast(body, signature(DataType.FP32)) is None


def test_integer_inputs_refuse_fractions_and_out_of_range_values_on_the_fast_path() -> None:
    assert fast(b'{"instances": [[1, 2.5]]}', signature(DataType.INT64)) is None
    assert fast(b'{"instances": [[1, 300]]}', signature(DataType.INT8)) is None
    assert fast(b'{"instances": [[1, -1]]}', signature(DataType.UINT8)) is None
    got = fast(b'{"instances": [[1, 127]]}', signature(DataType.INT8))
    assert got is not None
    assert got["in0"].dtype == np.int8


def test_several_inputs_and_unknown_signatures_follow_the_general_path() -> None:
    assert fast(b'{"instances": [[1, 2]]}', signature(DataType.FP32, inputs=2)) is None

    def unknown(name: str) -> Signature:
        raise NotFound(f"serving signature {name!r} not found")

    with pytest.raises(NotFound, match="'other'"):
        jsonarrays.decode_predict(b'{"signature_name": "other", "instances": [[1]]}', unknown)


# -- KServe v2 JSON ------------------------------------------------------------------------


def kserve_general(body: bytes) -> codec.InferRequest | ModelyardError:
    """``decode_request`` with the fast path switched off: the reference."""
    saved = jsonarrays.simdjson
    jsonarrays.simdjson = None  # type: ignore[assignment]
    try:
        return codec.decode_request(body)
    except ModelyardError as exc:
        return exc
    finally:
        jsonarrays.simdjson = saved


def assert_kserve_agrees(body: bytes) -> bool:
    """Same request or same error either way; True when the fast path took the body."""
    took = jsonarrays.decode_kserve(body) is not None
    want = kserve_general(body)
    try:
        got: codec.InferRequest | ModelyardError = codec.decode_request(body)
    except ModelyardError as exc:
        got = exc
    if isinstance(want, ModelyardError):
        assert isinstance(got, ModelyardError), f"accepted what the general path refuses: {body!r}"
        assert (got.code, got.message) == (want.code, want.message)
        return took
    assert isinstance(got, codec.InferRequest)
    assert (got.id, got.outputs, got.binary_output) == (want.id, want.outputs, want.binary_output)
    assert got.inputs.keys() == want.inputs.keys()
    for name, array in want.inputs.items():
        assert got.inputs[name].dtype == array.dtype
        assert got.inputs[name].shape == array.shape
        np.testing.assert_array_equal(got.inputs[name], array)
    return took


KSERVE_TYPES = ["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES"]


@given(
    value=tensors(),
    datatype=st.sampled_from(KSERVE_TYPES),
    flat=st.booleans(),
    declared=st.sampled_from(["right", "flat", "wrong"]),
    extra=st.sampled_from([{}, {"id": "r1"}, {"outputs": [{"name": "y"}]}, {"id": ["[x"]}]),
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_kserve_fast_path_builds_the_same_request_or_the_same_error(
    value: Any, datatype: str, flat: bool, declared: str, extra: dict[str, Any]
) -> None:
    try:
        shape = list(np.asarray(value).shape)
    except ValueError:  # ragged: declare something, the decoders must refuse it alike
        shape = [len(value)]
    if flat and shape and len(shape) == len(np.asarray(value, dtype=object).shape):
        value = np.asarray(value, dtype=object).ravel().tolist()
    if declared == "flat":
        shape = [int(np.prod(shape))]
    elif declared == "wrong":
        shape = [*shape, 2]
    tensor = {"name": "x", "shape": shape, "datatype": datatype, "data": value}
    assert_kserve_agrees(orjson.dumps({**extra, "inputs": [tensor]}))


def test_a_typical_kserve_json_request_takes_the_fast_path() -> None:
    x = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)
    tensors = [
        {"name": "x", "shape": [8, 1024], "datatype": "FP32", "data": x.ravel()},
        {"name": "n", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]},
    ]
    body = orjson.dumps(
        {"id": "a", "inputs": tensors, "outputs": [{"name": "y"}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    assert assert_kserve_agrees(body)
    np.testing.assert_array_equal(codec.decode_request(body).inputs["x"], x)


@pytest.mark.parametrize(
    "data",
    [
        "[[1, 2], [[3], 4]]",  # a leaf that is an array
        "[[1, 2], [[], 3]]",
        "[[1, 2], [3, 4, 5], [6]]",  # ragged with the right total
        '[1, "2", 3, 4]',
        "[1, true, 3, 4]",
        "[1, null, 3, 4]",
    ],
)
def test_kserve_bodies_left_to_the_general_path_get_its_error(data: str) -> None:
    tensor = '{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": ' + data + "}"
    body = '{"inputs": [' + tensor + "]}"
    assert jsonarrays.decode_kserve(body.encode()) is None
    with pytest.raises(InvalidArgument):
        codec.decode_request(body.encode())


@pytest.mark.parametrize("big", ["18446744073709551616", "-9223372036854775809", "1" * 40])
def test_integers_beyond_64_bits_are_left_to_the_general_path(big: str) -> None:
    """simdjson cannot hold them (BIGINT_ERROR): the fast path declines, the general path says
    what is wrong (found by tests/integration/test_hostile_requests.py as a 500)."""
    predict = ('{"instances": [[1, ' + big + "]]}").encode()
    assert jsonarrays.decode_predict(predict, lambda name: signature(DataType.INT64)) is None
    tensor = '{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, ' + big + "]}"
    body = ('{"inputs": [' + tensor + "]}").encode()
    assert jsonarrays.decode_kserve(body) is None
    with pytest.raises(InvalidArgument):
        codec.decode_request(body)
