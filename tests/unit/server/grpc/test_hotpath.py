"""The gRPC adapters' short ways: answers serialised by hand parse as the messages protobuf builds,
and the raw tensor fast path gives what the codec gives, or steps aside."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard import codec
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.hotpath import (
    KSERVE_LAYOUTS,
    TF_LAYOUTS,
    Encoded,
    datatype_of,
    model_infer_response,
    predict_response,
    raw_array,
    serializer_passing_encoded,
)
from modelyard.server.grpc.tfcodec import array_to_tensor
from modelyard.tensors import DataType
from modelyard.tfproto.generated import tensorflow_core_pb2 as core
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as tfs


def _array(datatype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype is DataType.BYTES:
        values = [b"", b"a", "é".encode(), b"\x00\xff" * 100][:count] * (count // 4 + 1)
        return np.array(values[:count], dtype=object).reshape(shape)
    if datatype is DataType.BOOL:
        return np.asarray(np.arange(count) % 3 == 0, dtype=np.bool_).reshape(shape)
    return (np.arange(count) - 2).astype(datatype.numpy).reshape(shape)


SHAPES = [(), (0,), (1, 10), (2, 0, 3), (3, 200)]
CASES = [(d, s) for d in DataType for s in SHAPES]


def _kserve_by_protobuf(
    model: str, version: str, request_id: str, outputs: dict[str, np.ndarray]
) -> bytes:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name, array in outputs.items():
        datatype = DataType.from_numpy(array.dtype)
        response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        response.raw_output_contents.append(codec.encode_raw(array, datatype))
    return bytes(response.SerializeToString())


@pytest.mark.parametrize(("datatype", "shape"), CASES, ids=str)
def test_model_infer_response_is_what_protobuf_builds(
    datatype: DataType, shape: tuple[int, ...]
) -> None:
    outputs = {"y": _array(datatype, shape), "second": np.zeros((2, 2), np.float32)}
    ours = model_infer_response("m", "3", "req-1", outputs)
    theirs = _kserve_by_protobuf("m", "3", "req-1", outputs)
    assert pb.ModelInferResponse.FromString(ours) == pb.ModelInferResponse.FromString(theirs)
    assert ours == theirs  # the same bytes, field order included


def test_model_infer_response_of_other_layouts() -> None:
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2]
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    outputs = {"be": big_endian, "strided": strided, "fortran": fortran}
    decoded = pb.ModelInferResponse.FromString(model_infer_response("m", "1", "", outputs))
    assert [o.datatype for o in decoded.outputs] == ["INT32", "FP64", "INT16"]
    for output, raw, array in zip(
        decoded.outputs, decoded.raw_output_contents, outputs.values(), strict=True
    ):
        again = codec.decode_raw(raw, DataType(output.datatype), tuple(output.shape), "y")
        np.testing.assert_array_equal(again, array)
    assert (
        model_infer_response("m", "", "", {})
        == pb.ModelInferResponse(model_name="m").SerializeToString()
    )


@pytest.mark.parametrize(("datatype", "shape"), CASES, ids=str)
@pytest.mark.parametrize("version", [0, 7, 2**40])
def test_predict_response_is_what_protobuf_builds(
    datatype: DataType, shape: tuple[int, ...], version: int
) -> None:
    outputs = {"y": _array(datatype, shape), "z": np.ones((1,), np.float32)}
    ours = tfs.PredictResponse.FromString(predict_response("m", version, "sig", outputs))
    theirs = tfs.PredictResponse()
    theirs.model_spec.name = "m"
    theirs.model_spec.signature_name = "sig"
    theirs.model_spec.version.value = version
    for key, array in outputs.items():
        array_to_tensor(array, theirs.outputs[key])
    assert ours == theirs
    assert ours.model_spec.HasField("version")


@pytest.mark.parametrize(("datatype", "shape"), CASES, ids=str)
def test_raw_array_agrees_with_the_codec_or_steps_aside(
    datatype: DataType, shape: tuple[int, ...]
) -> None:
    array = _array(datatype, shape)
    data = bytes(codec.encode_raw(array, datatype))
    dtype = KSERVE_LAYOUTS[datatype.value][1]
    fast = raw_array(data, dtype, list(shape))
    if datatype is DataType.BYTES or 0 in shape:
        assert fast is None
        return
    assert fast is not None
    expected = codec.decode_raw(data, datatype, shape, "x")
    assert fast.dtype == expected.dtype
    assert fast.shape == expected.shape
    np.testing.assert_array_equal(fast, expected)
    assert raw_array(data + b"\x00", dtype, list(shape)) is None  # the codec says why
    assert raw_array(data, dtype, [-1, *shape]) is None
    assert raw_array(data, dtype, [-1, -1, *shape]) is None  # the same count, still refused


def test_datatype_of_and_the_pass_through_serializer() -> None:
    assert datatype_of(np.dtype(np.float32)) is DataType.FP32
    assert datatype_of(np.dtype(">f4")) is DataType.FP32
    assert datatype_of(np.dtype(object)) is DataType.BYTES
    serialize = serializer_passing_encoded(pb.ModelInferResponse.SerializeToString)
    encoded = model_infer_response("m", "1", "", {})
    assert serialize(encoded) is encoded
    assert isinstance(encoded, Encoded)
    assert encoded.ByteSize() == len(encoded)
    assert serialize(pb.ModelInferResponse(model_name="m", model_version="1")) == bytes(encoded)


def test_layouts_name_every_datatype() -> None:
    for datatype in DataType:
        assert KSERVE_LAYOUTS[datatype.value][0] is datatype
        number = core.DataType.Value(datatype.tf_name)
        assert TF_LAYOUTS[number][0] is datatype
