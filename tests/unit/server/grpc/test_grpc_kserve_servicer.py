"""The KServe gRPC servicer without sockets: request decoding and the error-to-status mapping."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from modelyard.codec import encode_raw
from modelyard.errors import Code, InvalidArgument, Unimplemented
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.server.dataplane import DataPlane, ModelMetadata, ModelRef
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.kserve import KServeServicer, decode_inputs, model_ref
from modelyard.server.grpc.status import GRPC_STATUS
from modelyard.tensors import DataType

TYPED = [d for d in DataType if d is not DataType.FP16]


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    """The one part of ``grpc.aio.ServicerContext`` the servicer uses."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def _request(datatype: DataType, array: np.ndarray, *, raw: bool) -> Any:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype.value, shape=list(array.shape))
    if raw:
        request.raw_input_contents.append(encode_raw(array, datatype))
    else:
        field = {
            DataType.BOOL: "bool_contents",
            DataType.INT8: "int_contents",
            DataType.INT16: "int_contents",
            DataType.INT32: "int_contents",
            DataType.INT64: "int64_contents",
            DataType.UINT8: "uint_contents",
            DataType.UINT16: "uint_contents",
            DataType.UINT32: "uint_contents",
            DataType.UINT64: "uint64_contents",
            DataType.FP32: "fp32_contents",
            DataType.FP64: "fp64_contents",
            DataType.BYTES: "bytes_contents",
        }[datatype]
        getattr(tensor.contents, field).extend(array.ravel().tolist())
    return request


def _array(datatype: DataType) -> np.ndarray:
    if datatype is DataType.BYTES:
        return np.array([[b"a", b""], [b"bc", b"\x00"]], dtype=object)
    values = np.array([[0, 1], [1, 0]]) if datatype is DataType.BOOL else np.array([[1, 2], [3, 4]])
    return values.astype(datatype.numpy)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("datatype", TYPED, ids=lambda d: d.value)
def test_decode_inputs_as_the_client_described(datatype: DataType, raw: bool) -> None:
    array = _array(datatype)
    decoded = decode_inputs(_request(datatype, array, raw=raw))["x"]
    assert decoded.dtype == datatype.numpy
    assert decoded.shape == (2, 2)
    assert decoded.tolist() == array.tolist()


def test_fp16_has_no_typed_contents() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP16", shape=[1])
    with pytest.raises(InvalidArgument, match="raw_input_contents"):
        decode_inputs(request)


def test_narrow_integers_out_of_range_are_rejected() -> None:
    request = _request(DataType.INT32, np.array([1, 300], np.int32), raw=False)
    request.inputs[0].datatype = "INT8"
    with pytest.raises(InvalidArgument, match="outside the range of INT8"):
        decode_inputs(request)


def test_typed_element_count_must_match_shape() -> None:
    request = _request(DataType.FP32, np.zeros(3, np.float32), raw=False)
    request.inputs[0].shape[:] = [2, 2]
    with pytest.raises(InvalidArgument, match=r"3 values in contents.fp32_contents; expected 4"):
        decode_inputs(request)


def test_raw_contents_must_cover_every_input() -> None:
    request = _request(DataType.FP32, np.zeros(2, np.float32), raw=True)
    request.inputs.add(name="y", datatype="FP32", shape=[2])
    with pytest.raises(InvalidArgument, match="2 inputs but 1 raw_input_contents"):
        decode_inputs(request)


def test_duplicate_input_rejected() -> None:
    request = _request(DataType.FP32, np.zeros(2, np.float32), raw=False)
    request.inputs.append(request.inputs[0])
    with pytest.raises(InvalidArgument, match="more than once"):
        decode_inputs(request)


def test_shared_memory_is_refused_not_ignored() -> None:
    request = _request(DataType.FP32, np.zeros(2, np.float32), raw=False)
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(Unimplemented, match="shared_memory_region"):
        decode_inputs(request)


def test_model_ref_versions() -> None:
    assert model_ref("m", "") == ModelRef("m")
    assert model_ref("m", "3") == ModelRef("m", 3)
    for bad in ("0", "-1", "x", "1.0"):
        with pytest.raises(InvalidArgument, match="positive integer"):
            model_ref("m", bad)


def test_every_code_has_a_grpc_status() -> None:
    assert set(GRPC_STATUS) == set(Code)
    assert all(status.name == code.value for code, status in GRPC_STATUS.items())


class BrokenDataPlane(DataPlane):
    def metadata(self, ref: ModelRef) -> ModelMetadata:
        raise ZeroDivisionError("a bug")


def _call(servicer: KServeServicer, method: str, request: Any) -> Any:
    return asyncio.run(getattr(servicer, method)(request, FakeContext()))


def test_modelyard_errors_become_their_status() -> None:
    servicer = KServeServicer(DataPlane(ModelRegistry()))
    with pytest.raises(Aborted) as info:
        _call(servicer, "ModelMetadata", pb.ModelMetadataRequest(name="nope"))
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in info.value.details


def test_unexpected_errors_become_internal(caplog: pytest.LogCaptureFixture) -> None:
    servicer = KServeServicer(BrokenDataPlane(ModelRegistry()))
    with pytest.raises(Aborted) as info:
        _call(servicer, "ModelMetadata", pb.ModelMetadataRequest(name="m"))
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError" in info.value.details
    assert "a bug" in caplog.text


def test_health_and_server_metadata() -> None:
    plane = DataPlane(ModelRegistry())
    servicer = KServeServicer(plane)
    assert _call(servicer, "ServerLive", pb.ServerLiveRequest()).live
    assert not _call(servicer, "ServerReady", pb.ServerReadyRequest()).ready
    plane.started = True
    assert _call(servicer, "ServerReady", pb.ServerReadyRequest()).ready
    metadata = _call(servicer, "ServerMetadata", pb.ServerMetadataRequest())
    assert (metadata.name, metadata.version) == ("modelyard", plane.version)
    assert list(metadata.extensions) == list(plane.extensions)
