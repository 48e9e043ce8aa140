"""KServe v2 REST against a real server on 127.0.0.1, spoken to by the official tritonclient.

The server and the models are conftest's shared fixtures (``server``, ``models``, with a small
request body limit). Answers are compared with the models computed in-process; bad requests
are sent with httpx so each kind of mistake is exactly one mistake.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard import __version__
from modelyard.testing.models import BuiltModel
from modelyard.testing.server import RunningServer

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

Models = dict[str, dict[int, BuiltModel]]


@pytest.fixture
def triton(server: RunningServer) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(url=server.rest_url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        yield client


def _inputs(model: BuiltModel, *, binary: bool) -> list[Any]:
    inputs = []
    for spec in model.signature.inputs:
        array = model.example[spec.name]
        tensor = httpclient.InferInput(spec.name, list(array.shape), spec.datatype.value)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _assert_equal(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- health and metadata ---------------------------------------------------------------------


def test_server_live_ready_and_metadata(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "modelyard"
    assert metadata["version"] == __version__
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_ready_by_name_and_version(triton: Any) -> None:
    assert triton.is_model_ready("linear")
    assert triton.is_model_ready("linear", "2")
    assert not triton.is_model_ready("linear", "9")
    assert not triton.is_model_ready("no_such_model")


def test_model_ready_statuses(http: httpx.Client) -> None:
    assert http.get("/v2/models/linear/ready").status_code == 200
    unknown = http.get("/v2/models/no_such_model/ready")
    assert unknown.status_code == 404
    assert "no_such_model" in unknown.json()["error"]
    assert http.get("/v2/models/linear/versions/9/ready").status_code == 404


@pytest.mark.parametrize("name", ["linear", "sum_product", "int64_affine"])
def test_model_metadata_equals_the_signature(triton: Any, models: Models, name: str) -> None:
    versions = models[name]
    model = versions[max(versions)]
    metadata = triton.get_model_metadata(name)
    assert metadata["name"] == name
    assert metadata["versions"] == [str(v) for v in sorted(versions)]
    assert metadata["platform"] == "onnxruntime_onnx"
    for key, specs in (("inputs", model.signature.inputs), ("outputs", model.signature.outputs)):
        assert metadata[key] == [
            {"name": s.name, "datatype": s.datatype.value, "shape": list(s.shape)} for s in specs
        ]
    assert triton.get_model_metadata(name, "1")["name"] == name


# -- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("name", ["linear", "sum_product", "int64_affine"])
def test_infer_equals_in_process(triton: Any, models: Models, name: str, binary: bool) -> None:
    versions = models[name]
    model = versions[max(versions)]
    outputs = None
    if not binary:
        # Listing the outputs with binary_data=False is how tritonclient asks for JSON data.
        outputs = [
            httpclient.InferRequestedOutput(s.name, binary_data=False)
            for s in model.signature.outputs
        ]
    result = triton.infer(name, _inputs(model, binary=binary), outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["model_name"] == name
    assert response["model_version"] == str(max(versions))
    assert response["id"] == "req-7"
    for out_name, expected in model.reference(model.example).items():
        # The output came in the form asked for: JSON "data", or bytes after the header.
        output = result.get_output(out_name)
        assert ("data" in output) is not binary
        assert ("binary_data_size" in output.get("parameters", {})) is binary
        _assert_equal(result.as_numpy(out_name), expected)


def test_infer_mlp_torch_export(triton: Any, models: Models) -> None:
    model = models["mlp"][2]
    result = triton.infer("mlp", _inputs(model, binary=True))
    for out_name, expected in model.reference(model.example).items():
        _assert_equal(result.as_numpy(out_name), expected)


def test_versions_reach_their_own_weights(triton: Any, models: Models) -> None:
    example = models["linear"][1]
    answers = {
        version: triton.infer("linear", _inputs(example, binary=True), model_version=str(version))
        for version in (1, 2)
    }
    for version, result in answers.items():
        assert result.get_response()["model_version"] == str(version)
        expected = models["linear"][version].reference(example.example)["y"]
        _assert_equal(result.as_numpy("y"), expected)
    assert not np.allclose(answers[1].as_numpy("y"), answers[2].as_numpy("y"))


def test_requested_output_subset_in_mixed_formats(triton: Any, models: Models) -> None:
    model = models["sum_product"][1]
    expected = model.reference(model.example)
    only_product = [httpclient.InferRequestedOutput("product", binary_data=True)]
    result = triton.infer("sum_product", _inputs(model, binary=False), outputs=only_product)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["product"]
    assert result.as_numpy("sum") is None
    _assert_equal(result.as_numpy("product"), expected["product"])
    both = [
        httpclient.InferRequestedOutput("product", binary_data=False),
        httpclient.InferRequestedOutput("sum", binary_data=True),
    ]
    result = triton.infer("sum_product", _inputs(model, binary=True), outputs=both)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["product", "sum"]
    for out_name in ("product", "sum"):
        _assert_equal(result.as_numpy(out_name), expected[out_name])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton: Any, models: Models, algorithm: str) -> None:
    model = models["linear"][2]
    result = triton.infer(
        "linear", _inputs(model, binary=True), request_compression_algorithm=algorithm
    )
    _assert_equal(result.as_numpy("y"), model.reference(model.example)["y"])


def test_nested_json_data_with_curl_style_request(http: httpx.Client, models: Models) -> None:
    model = models["linear"][2]
    x = model.example["x"]
    body = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]
    }
    response = http.post("/v2/models/linear/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    (output,) = response.json()["outputs"]
    assert output["shape"] == [2, 2]
    got = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    _assert_equal(got, model.reference(model.example)["y"])


def test_tritonclient_sees_server_errors(triton: Any, models: Models) -> None:
    model = models["linear"][2]
    with pytest.raises(InferenceServerException, match="no_such_model"):
        triton.infer("no_such_model", _inputs(model, binary=True))


# -- bad input ---------------------------------------------------------------------------------


def _x_input(**overrides: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": "x",
        "shape": [1, 4],
        "datatype": "FP32",
        "data": [[1, 2, 3, 4]],
    }
    tensor.update(overrides)
    return {"inputs": [tensor]}


BAD_REQUESTS: list[tuple[str, str, Any, int, list[str]]] = [
    # (id, path, body (bytes or JSON), status, fragments the error must contain)
    ("malformed_json", "linear", b'{"inputs": [', 400, ["not valid JSON"]),
    ("unknown_model", "no_such_model", _x_input(), 404, ["no_such_model", "linear"]),
    ("unknown_version", "linear/versions/7", _x_input(), 404, ["no version 7", "versions: 1, 2"]),
    ("bad_version", "linear/versions/abc", _x_input(), 400, ["'abc'", "positive integer"]),
    ("wrong_input_name", "linear", _x_input(name="z"), 400, ["'z'", "x: FP32 [?, 4]"]),
    (
        "wrong_shape",
        "linear",
        _x_input(shape=[1, 3], data=[1, 2, 3]),
        400,
        ["[1, 3]", "x: FP32 [?, 4]"],
    ),
    (
        "wrong_dtype",
        "linear",
        _x_input(datatype="FP64"),
        400,
        ["FP64", "x: FP32 [?, 4]"],
    ),
    (
        "string_values",
        "linear",
        _x_input(data=["a", "b", "c", "d"]),
        400,
        ["'x'", "not FP32", "found string", "JSON numbers"],
    ),
    (
        "ragged",
        "linear",
        _x_input(shape=[2, 4], data=[[1, 2, 3, 4], [5, 6]]),
        400,
        ["'x'", "ragged", "lengths [2, 4]"],
    ),
    (
        "count_mismatch",
        "linear",
        _x_input(shape=[2, 4]),
        400,
        ["'x'", "4 values", "expected 8 for shape [2, 4]"],
    ),
    ("no_inputs", "linear", {"inputs": []}, 400, ['no "inputs"']),
    (
        "unknown_output",
        "linear",
        {**_x_input(), "outputs": [{"name": "nope"}]},
        400,
        ["'nope'", "y: FP32 [?, 2]"],
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "fragments"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_say_what_was_wrong_and_what_was_expected(
    http: httpx.Client, path: str, body: Any, status: int, fragments: list[str]
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(f"/v2/models/{path}/infer", content=content)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message


def test_binary_size_mismatch(http: httpx.Client) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 12},
                }
            ]
        }
    ).encode()
    response = http.post(
        "/v2/models/linear/infer",
        content=header + b"\x00" * 12,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    message = response.json()["error"]
    assert "12 bytes" in message
    assert "expected 16 bytes for FP32 [1, 4]" in message


def test_oversize_body_is_refused_with_413(http: httpx.Client, body_limit: int) -> None:
    rows = body_limit // 16 + 1
    x = np.zeros((rows, 4), dtype=np.float32)
    body = _x_input(shape=[rows, 4], data=x.tolist())
    response = http.post("/v2/models/linear/infer", json=body)
    assert response.status_code == 413
    message = response.json()["error"]
    assert f"limit of {body_limit}" in message or str(body_limit) in message
    assert "--max-request-bytes" in message


def test_server_keeps_serving_after_bad_requests(
    http: httpx.Client, triton: Any, models: Models
) -> None:
    for _, path, body, _, _ in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        http.post(f"/v2/models/{path}/infer", content=content)
    model = models["linear"][2]
    result = triton.infer("linear", _inputs(model, binary=True))
    _assert_equal(result.as_numpy("y"), model.reference(model.example)["y"])
    assert triton.is_server_ready()
