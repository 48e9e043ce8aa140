"""TF Serving's REST API against a real server: answers equal the models computed in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.testing.models import BuiltModel
from modelyard.testing.server import RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=30) as c:
        yield c


def _rows(model: BuiltModel) -> list[Any]:
    """The example input in row format: one entry per row."""
    example = model.example
    if len(example) == 1:
        rows: list[Any] = next(iter(example.values())).tolist()
        return rows
    batch = len(next(iter(example.values())))
    return [{name: a[i].tolist() for name, a in example.items()} for i in range(batch)]


def _expected_rows(model: BuiltModel) -> Any:
    expected = model.reference(model.example)
    if len(expected) == 1:
        return next(iter(expected.values()))
    return expected


@pytest.mark.parametrize("name", ["linear", "sum_product", "int64_affine", "mlp", "scripted"])
def test_row_predict_equals_in_process(
    client: httpx.Client, models: dict[str, dict[int, BuiltModel]], name: str
) -> None:
    model = max(models[name].items())[1]
    response = client.post(f"/v1/models/{name}:predict", json={"instances": _rows(model)})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = _expected_rows(model)
    if isinstance(expected, dict):
        for out_name, values in expected.items():
            got = np.array([row[out_name] for row in predictions])
            np.testing.assert_allclose(got, values, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(np.array(predictions), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "sum_product", "mlp"])
def test_columnar_predict_equals_in_process(
    client: httpx.Client, models: dict[str, dict[int, BuiltModel]], name: str
) -> None:
    model = max(models[name].items())[1]
    inputs = {k: v.tolist() for k, v in model.example.items()}
    response = client.post(f"/v1/models/{name}:predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = model.reference(model.example)
    if len(expected) == 1:
        outputs = {next(iter(expected)): outputs}
    for out_name, values in expected.items():
        np.testing.assert_allclose(np.array(outputs[out_name]), values, rtol=1e-5, atol=1e-6)


def test_versions_and_labels_reach_their_own_weights(
    client: httpx.Client, models: dict[str, dict[int, BuiltModel]]
) -> None:
    v1, v2 = models["mlp"][1], models["mlp"][2]
    rows = _rows(v1)
    answers = {
        path: np.array(client.post(path, json={"instances": rows}).json()["predictions"])
        for path in (
            "/v1/models/mlp/versions/1:predict",
            "/v1/models/mlp/labels/stable:predict",
            "/v1/models/mlp/versions/2:predict",
            "/v1/models/mlp/labels/canary:predict",
            "/v1/models/mlp:predict",
        )
    }
    want1 = _expected_rows(v1)
    want2 = v2.reference(v1.example)["output_0"]
    assert not np.allclose(want1, want2)  # the two versions really differ
    for path in ("/v1/models/mlp/versions/1:predict", "/v1/models/mlp/labels/stable:predict"):
        np.testing.assert_allclose(answers[path], want1, rtol=1e-5, atol=1e-6)
    for path in (
        "/v1/models/mlp/versions/2:predict",
        "/v1/models/mlp/labels/canary:predict",
        "/v1/models/mlp:predict",  # no version: the latest
    ):
        np.testing.assert_allclose(answers[path], want2, rtol=1e-5, atol=1e-6)


def test_model_status_lists_every_version(client: httpx.Client) -> None:
    body = client.get("/v1/models/linear").json()
    assert body == {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in ("1", "2")
        ]
    }
    one = client.get("/v1/models/linear/labels/stable").json()["model_version_status"]
    assert [s["version"] for s in one] == ["1"]


def test_metadata_is_a_signature_def(
    client: httpx.Client, models: dict[str, dict[int, BuiltModel]]
) -> None:
    body = client.get("/v1/models/sum_product/metadata").json()
    assert body["model_spec"] == {"name": "sum_product", "signature_name": "", "version": "1"}
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    want = models["sum_product"][1].signature
    assert sorted(sig["inputs"]) == sorted(s.name for s in want.inputs)
    for spec in want.inputs:
        info = sig["inputs"][spec.name]
        assert info["dtype"] == spec.datatype.tf_name
        assert [int(d["size"]) for d in info["tensor_shape"]["dim"]] == list(spec.shape)


BAD_REQUESTS = [
    # (method, path, body, status, words the message must contain)
    ("POST", "/v1/models/linear:predict", b"{not json", 400, ["not valid JSON"]),
    ("POST", "/v1/models/linear:predict", b"[1, 2]", 400, ["JSON object"]),
    ("POST", "/v1/models/nope:predict", b'{"instances": [[1,2,3,4]]}', 404, ["'nope'", "linear"]),
    (
        "POST",
        "/v1/models/linear/versions/9:predict",
        b'{"instances": [[1,2,3,4]]}',
        404,
        ["version 9", "1, 2"],
    ),
    (
        "POST",
        "/v1/models/linear/labels/beta:predict",
        b'{"instances": [[1,2,3,4]]}',
        404,
        ["'beta'", "stable"],
    ),
    (
        "POST",
        "/v1/models/linear/versions/x:predict",
        b'{"instances": [[1,2,3,4]]}',
        400,
        ["'x'", "positive integer"],
    ),
    (
        "POST",
        "/v1/models/linear:predict",
        b'{"inputs": {"z": [[1,2,3,4]]}}',
        400,
        ["unknown input 'z'", "x: FP32 [?, 4]"],
    ),
    (
        "POST",
        "/v1/models/linear:predict",
        b'{"instances": [[1,2,3]]}',
        400,
        ["shape [1, 3]", "x: FP32 [?, 4]"],
    ),
    (
        "POST",
        "/v1/models/linear:predict",
        b'{"instances": [["a","b","c","d"]]}',
        400,
        ["string", "FP32"],
    ),
    (
        "POST",
        "/v1/models/linear:predict",
        b'{"instances": [[1,2,3,4],[1,2]]}',
        400,
        ["ragged", "x: FP32 [?, 4]"],
    ),
    ("POST", "/v1/models/int64_affine:predict", b'{"instances": [1.5]}', 400, ["number", "INT64"]),
    (
        "POST",
        "/v1/models/linear:predict",
        b'{"rows": [[1,2,3,4]]}',
        400,
        ["'instances'", "'inputs'"],
    ),
    (
        "POST",
        "/v1/models/sum_product:predict",
        b'{"instances": [{"a": [1,2,3]}]}',
        400,
        ["missing input 'b'"],
    ),
    (
        "POST",
        "/v1/models/linear:predict",
        b'{"signature_name": "other", "instances": [[1,2,3,4]]}',
        400,
        ["'other'", "serving_default"],
    ),
    ("POST", "/v1/models/linear:explain", b'{"examples": []}', 404, [":explain"]),
    (
        "POST",
        "/v1/models/linear:classify",
        b'{"examples": [{"x": [1.0]}]}',
        400,
        ["Classify", "tensorflow/serving/classify"],
    ),
    ("POST", "/v1/models/linear:regress", b'{"examples": []}', 400, ["'examples'"]),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_that_says_what_was_expected(
    client: httpx.Client, method: str, path: str, body: bytes, status: int, words: list[str]
) -> None:
    response = client.request(method, path, content=body)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    # ...and the server keeps serving correct answers.
    good = client.post("/v1/models/linear/versions/1:predict", json={"inputs": [[1, 2, 3, 4]]})
    assert good.status_code == 200


def test_oversize_body_is_refused_with_413(client: httpx.Client, body_limit: int) -> None:
    rows = [[0.5, 0.5, 0.5, 0.5]] * (body_limit // 16)
    response = client.post("/v1/models/linear:predict", json={"instances": rows})
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["error"]
    assert client.post("/v1/models/linear:predict", json={"instances": rows[:2]}).status_code == 200
