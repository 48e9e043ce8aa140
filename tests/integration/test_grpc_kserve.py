"""KServe v2 gRPC against a real server on 127.0.0.1, spoken to by the official tritonclient.

The server and the models are conftest's shared fixtures (``server``, ``models``).

Malformed requests that tritonclient's helpers refuse to build are sent through tritonclient's
own generated stubs, so every byte on the wire is the official client's format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from modelyard import __version__
from modelyard.errors import Unavailable
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.server import start_grpc_server
from modelyard.testing.models import BuiltModel
from modelyard.testing.server import RunningServer

grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

Models = dict[str, dict[int, BuiltModel]]


@pytest.fixture
def client(server: RunningServer) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(url=server.grpc_target)
    yield client
    client.close()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _input(name: str, array: np.ndarray, datatype: str | None = None) -> Any:
    from tritonclient.utils import np_to_triton_dtype

    tensor = grpcclient.InferInput(
        name, list(array.shape), datatype or np_to_triton_dtype(array.dtype)
    )
    return tensor.set_data_from_numpy(array)


def _error(call: Any) -> Any:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# -- health and metadata ---------------------------------------------------------------------


def test_health(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", "2")


def test_an_unknown_model_or_version_is_not_ready_rather_than_an_error(client: Any) -> None:
    # Triton's contract: tritonclient's is_model_ready returns False, it does not raise.
    assert client.is_model_ready("nope") is False
    assert client.is_model_ready("linear", "9") is False
    error = _error(lambda: client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "nope" in error.message()


def test_server_metadata(client: Any) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "modelyard"
    assert metadata.version == __version__
    assert "binary_tensor_data" in metadata.extensions


def test_model_metadata_matches_the_model(client: Any, models: Models) -> None:
    for name, versions in models.items():
        metadata = client.get_model_metadata(name)
        signature = versions[max(versions)].signature
        assert metadata.name == name
        assert sorted(metadata.versions) == sorted(str(v) for v in versions)
        assert metadata.platform
        for got, want in [
            (metadata.inputs, signature.inputs),
            (metadata.outputs, signature.outputs),
        ]:
            assert [(t.name, t.datatype, list(t.shape)) for t in got] == [
                (s.name, s.datatype.value, list(s.shape)) for s in want
            ]


def test_model_metadata_errors(client: Any) -> None:
    assert _error(lambda: client.get_model_metadata("nope")).status() == "StatusCode.NOT_FOUND"
    error = _error(lambda: client.get_model_metadata("linear", "abc"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "positive integer" in error.message()


# -- inference -------------------------------------------------------------------------------


def test_infer_equals_the_model(client: Any, models: Models) -> None:
    built = models["linear"][2]
    x = built.example["x"]
    result = client.infer("linear", [_input("x", x)], request_id="r-1")
    response = result.get_response()
    assert response.model_name == "linear"
    assert response.model_version == "2"
    assert response.id == "r-1"
    np.testing.assert_allclose(result.as_numpy("y"), built.reference({"x": x})["y"], rtol=1e-5)


def test_every_model_and_version_answers_as_computed_in_process(
    client: Any, models: Models
) -> None:
    for name, versions in models.items():
        for version, built in versions.items():
            inputs = [_input(n, a) for n, a in built.example.items()]
            result = client.infer(name, inputs, model_version=str(version))
            expected = built.reference(built.example)
            response = result.get_response()
            assert [o.name for o in response.outputs] == [s.name for s in built.signature.outputs]
            for output in built.signature.outputs:
                np.testing.assert_allclose(
                    result.as_numpy(output.name),
                    expected[output.name],
                    rtol=1e-5,
                    atol=1e-6,
                    err_msg=f"{name} v{version} {output.name}",
                )


def test_infer_specific_version(client: Any, models: Models) -> None:
    x = models["linear"][1].example["x"]
    result = client.infer("linear", [_input("x", x)], model_version="1")
    assert result.get_response().model_version == "1"
    want = models["linear"][1].reference({"x": x})["y"]
    np.testing.assert_allclose(result.as_numpy("y"), want, rtol=1e-5)
    other = models["linear"][2].reference({"x": x})["y"]
    assert not np.allclose(want, other)  # the versions really differ


def test_requested_outputs_subset_and_order(client: Any, models: Models) -> None:
    built = models["sum_product"][1]
    inputs = [_input(n, a) for n, a in built.example.items()]
    expected = built.reference(built.example)

    result = client.infer(
        "sum_product", inputs, outputs=[grpcclient.InferRequestedOutput("product")]
    )
    assert [o.name for o in result.get_response().outputs] == ["product"]
    np.testing.assert_allclose(result.as_numpy("product"), expected["product"], rtol=1e-6)
    assert result.as_numpy("sum") is None

    both = [grpcclient.InferRequestedOutput(n) for n in ("product", "sum")]
    result = client.infer("sum_product", inputs, outputs=both)
    assert [o.name for o in result.get_response().outputs] == ["product", "sum"]
    np.testing.assert_allclose(result.as_numpy("sum"), expected["sum"], rtol=1e-6)

    result = client.infer("sum_product", inputs)
    assert [o.name for o in result.get_response().outputs] == ["sum", "product"]


def test_int64_values_survive_exactly(client: Any, models: Models) -> None:
    built = models["int64_affine"][1]
    x = built.example["x"]
    result = client.infer("int64_affine", [_input("x", x)])
    assert result.get_response().outputs[0].datatype == "INT64"
    np.testing.assert_array_equal(result.as_numpy("y"), built.reference({"x": x})["y"])


def test_typed_contents(stub: Any, models: Models) -> None:
    built = models["linear"][1]
    x = built.example["x"]
    request = service_pb2.ModelInferRequest(model_name="linear", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", "FP32", [2, 2])
    y = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(output.shape)
    np.testing.assert_allclose(y, built.reference({"x": x})["y"], rtol=1e-5)


# -- bad input -------------------------------------------------------------------------------


def _invalid(call: Any, *fragments: str) -> None:
    error = _error(call)
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    for fragment in fragments:
        assert fragment in error.message(), error.message()


def test_bad_requests_are_rejected_and_the_server_keeps_serving(
    client: Any, stub: Any, models: Models
) -> None:
    built = models["linear"][2]
    x = built.example["x"]

    error = _error(lambda: client.infer("nope", [_input("x", x)]))
    assert error.status() == "StatusCode.NOT_FOUND"
    error = _error(lambda: client.infer("linear", [_input("x", x)], model_version="9"))
    assert error.status() == "StatusCode.NOT_FOUND"
    _invalid(lambda: client.infer("linear", [_input("x", x)], model_version="0"), "positive")

    _invalid(lambda: client.infer("linear", [_input("wrong", x)]), "'wrong'", "x: FP32 [?, 4]")
    _invalid(
        lambda: client.infer("linear", [_input("x", x.astype(np.float64))]),
        "FP64",
        "x: FP32 [?, 4]",
    )
    _invalid(
        lambda: client.infer("linear", [_input("x", np.zeros((2, 3), np.float32))]),
        "[2, 3]",
        "x: FP32 [?, 4]",
    )

    short = _input("x", x)
    short.set_shape([2, 5])  # 32 bytes of data for a shape that needs 40
    _invalid(lambda: client.infer("linear", [short]), "32 bytes", "expected 40 bytes")

    request = service_pb2.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend([1.0] * 8)
    request.raw_input_contents.append(x.tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in info.value.details()

    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FLOAT", shape=[2, 4])
    request.raw_input_contents.append(x.tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'FLOAT'" in info.value.details()
    assert "FP32" in info.value.details()

    result = client.infer("linear", [_input("x", x)])
    np.testing.assert_allclose(result.as_numpy("y"), built.reference({"x": x})["y"], rtol=1e-5)


def test_oversized_request_is_resource_exhausted(client: Any, body_limit: int) -> None:
    big = np.zeros((body_limit // 16 + 1, 4), np.float32)  # 4 bytes more than the limit
    error = _error(lambda: client.infer("linear", [_input("x", big)]))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


# -- the server itself -----------------------------------------------------------------------


def test_start_grpc_server_port_in_use_and_extra_servicers() -> None:
    registered: list[object] = []

    async def scenario() -> None:
        plane = DataPlane(ModelRegistry())
        first = await start_grpc_server(
            plane, "127.0.0.1", 0, max_message_bytes=1 << 20, extra_servicers=[registered.append]
        )
        try:
            assert first.port > 0
            assert len(registered) == 1
            with pytest.raises(Unavailable, match=f"127.0.0.1:{first.port}"):
                await start_grpc_server(plane, "127.0.0.1", first.port, max_message_bytes=1 << 20)
        finally:
            await first.stop(0)

    asyncio.run(scenario())
