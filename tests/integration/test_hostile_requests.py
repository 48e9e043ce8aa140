"""Hostile requests against a real server: whatever a client sends, the answer is a success or a
4xx (gRPC: a client-side status) with a message, no worker dies, and correct requests go on
getting correct answers.

Hypothesis builds the requests: JSON of any shape where a body is expected, request bodies with
one part replaced by anything, raw bytes, KServe binary bodies whose header length and buffer
sizes lie, and KServe v2 / TF Serving gRPC messages with any names, shapes, datatypes and raw
contents (TF Serving's through modelyard's own copy of its protos: the same bytes on the wire).
The server and models are conftest's shared fixtures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelyard.testing.models import BuiltModel
from modelyard.testing.server import RunningServer
from modelyard.tfproto.generated import tensorflow_core_pb2 as tf_core
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as tf_apis
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2_grpc as tf_apis_grpc

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

Models = dict[str, dict[int, BuiltModel]]

# The workers are read before the first hostile request, and compared after the last.
pytestmark = pytest.mark.usefixtures("worker_pids")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

MODEL_NAMES = ["linear", "sum_product", "int64_affine", "mlp", "scripted", "no_such_model"]
TENSOR_NAMES = ["x", "a", "b", "y", "", "x\u0000", "\u00e9"]
DATATYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "BF16"]
DATATYPES_AND_JUNK = [*DATATYPES, "fp32", "", "STRING", "INT128"]

# gRPC statuses a client's mistake may get; INTERNAL, UNKNOWN and UNAVAILABLE are the server's.
CLIENT_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=24,
)
number_rows = st.lists(
    st.lists(st.integers(-5, 5) | st.floats(-1e40, 1e40, allow_nan=False), max_size=6), max_size=4
)
HUGE_EMPTY = [0, 6795, 316183, 1073252129]  # found by this test: numpy refused it, a 500

# Small dimensions; huge ones (numpy cannot build [0, 2**40, 2**40] though it holds nothing); and
# more dimensions than numpy takes.
shapes = (
    st.lists(st.integers(-2, 9), max_size=4)
    | st.lists(st.integers(-3, 9) | st.integers(0, 2**40), max_size=4)
    | st.lists(st.integers(0, 2), min_size=30, max_size=70)
)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@pytest.fixture(scope="module")
def worker_pids(http: httpx.Client) -> dict[str, int]:
    """The worker of each device, before any hostile request."""
    return _pids(http)


def _pids(http: httpx.Client) -> dict[str, int]:
    return {d["name"]: d["pid"] for d in http.get("/modelyard/v1/status").json()["devices"]}


def _assert_client_error(response: httpx.Response, sent: bytes) -> None:
    """A 2xx, or a 4xx with a JSON error message; never a 5xx."""
    where = f"{response.request.method} {response.request.url.path} with {sent[:300]!r}"
    assert response.status_code < 500, f"{response.status_code} {response.text[:300]} for {where}"
    if response.status_code >= 400:
        error = response.json().get("error")
        assert isinstance(error, str), f"{response.status_code} without a message for {where}"
        assert error, where


def _still_serving(http: httpx.Client, models: Models, worker_pids: dict[str, int]) -> None:
    """The same workers, and the right answer to a correct request."""
    assert _pids(http) == worker_pids
    model = models["linear"][2]
    x = model.example["x"]
    response = http.post("/v1/models/linear:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    expected = model.reference(model.example)["y"]
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-5, atol=1e-6)


def _rows_of(model: BuiltModel) -> Any:
    example = model.example
    if len(example) == 1:
        return next(iter(example.values())).tolist()
    batch = len(next(iter(example.values())))
    return [{k: v[i].tolist() for k, v in example.items()} for i in range(batch)]


# -- TF Serving REST -------------------------------------------------------------------------

features = (
    json_values
    | number_rows
    | st.lists(st.integers(-(2**70), 2**70) | st.floats(allow_nan=False), max_size=4)
    | st.fixed_dictionaries({"b64": st.text(max_size=12) | json_values})
    | st.lists(st.fixed_dictionaries({"b64": st.text(max_size=12)}), max_size=3)
)
tf_paths = st.builds(
    lambda name, where, verb: f"/v1/models/{name}{where}:{verb}",
    st.sampled_from(MODEL_NAMES),
    st.sampled_from(
        ["", "/versions/1", "/versions/2", "/versions/9", "/labels/stable", "/labels/x"]
    ),
    st.sampled_from(["predict", "classify", "regress"]),
)
tf_bodies = st.one_of(
    json_values,
    st.dictionaries(
        st.sampled_from(["instances", "inputs", "signature_name", "x", ""]), json_values, max_size=3
    ),
    st.fixed_dictionaries({"instances": number_rows}),
    st.fixed_dictionaries(
        {"inputs": st.dictionaries(st.sampled_from(TENSOR_NAMES), number_rows, max_size=3)}
    ),
    st.fixed_dictionaries(
        {"instances": st.lists(st.dictionaries(st.sampled_from(TENSOR_NAMES), json_values))}
    ),
    st.fixed_dictionaries(  # tf.Example features for :classify and :regress
        {
            "examples": st.lists(
                st.dictionaries(st.sampled_from(TENSOR_NAMES), features) | json_values
            )
        },
        optional={
            "context": st.dictionaries(st.sampled_from(TENSOR_NAMES), features) | json_values
        },
    ),
)


@FUZZ
@given(path=tf_paths, body=tf_bodies)
@example(  # found by this test: a non-ASCII b64 string was a ValueError, a 500
    path="/v1/models/linear:classify", body={"examples": [{"x": {"b64": "\u00e4"}}]}
)
def test_tf_serving_rest_answers_any_json_with_a_4xx_or_an_answer(
    http: httpx.Client, path: str, body: Any
) -> None:
    sent = json.dumps(body).encode()
    response = http.post(path, content=sent, headers={"content-type": "application/json"})
    _assert_client_error(response, sent)


@FUZZ
@given(path=tf_paths, raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_tf_serving_rest_answers_any_bytes_with_a_4xx(
    http: httpx.Client, path: str, raw: bytes
) -> None:
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    _assert_client_error(response, raw)


# -- KServe v2 REST --------------------------------------------------------------------------

kserve_paths = st.builds(
    lambda name, where: f"/v2/models/{name}{where}/infer",
    st.sampled_from(MODEL_NAMES),
    st.sampled_from(["", "/versions/1", "/versions/2", "/versions/9", "/versions/x"]),
)
kserve_inputs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(TENSOR_NAMES),
        "shape": shapes,
        "datatype": st.sampled_from(DATATYPES_AND_JUNK),
        "data": json_values | number_rows | st.lists(st.integers(-3, 3) | st.floats(-2, 2)),
    },
    optional={
        "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "z"]), json_values)
    },
)
kserve_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"inputs": st.lists(kserve_inputs, max_size=3)},
        optional={
            "outputs": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(TENSOR_NAMES)},
                    optional={"parameters": st.dictionaries(st.text(max_size=12), json_values)},
                ),
                max_size=2,
            ),
            "parameters": json_values,
            "id": json_values,
        },
    ),
)


@FUZZ
@given(path=kserve_paths, body=kserve_bodies)
@example(
    path="/v2/models/linear/infer",
    body={"inputs": [{"name": "x", "shape": HUGE_EMPTY, "datatype": "FP32", "data": []}]},
)
@example(  # found by this test: simdjson cannot hold a 65-bit integer, a 500
    path="/v2/models/int64_affine/infer",
    body={"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2**64]}]},
)
def test_kserve_rest_json_answers_any_request_with_a_4xx_or_an_answer(
    http: httpx.Client, path: str, body: Any
) -> None:
    sent = json.dumps(body).encode()
    response = http.post(path, content=sent, headers={"content-type": "application/json"})
    _assert_client_error(response, sent)


@FUZZ
@given(
    path=kserve_paths,
    header=st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(TENSOR_NAMES),
                        "shape": shapes,
                        "datatype": st.sampled_from(DATATYPES_AND_JUNK),
                        "parameters": st.fixed_dictionaries(
                            {"binary_data_size": st.integers(-4, 80) | json_scalars}
                        ),
                    }
                ),
                max_size=3,
            )
        }
    ),
    payload=st.binary(max_size=80),
    lie=st.integers(-8, 8) | st.text(alphabet="0123456789+-.eExyz", min_size=1, max_size=4),
)
def test_kserve_rest_binary_answers_lying_sizes_with_a_4xx(
    http: httpx.Client, path: str, header: Any, payload: bytes, lie: int | str
) -> None:
    head = json.dumps(header).encode()
    length = str(len(head) + lie) if isinstance(lie, int) else lie
    sent = head + payload
    response = http.post(
        path,
        content=sent,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": length,
        },
    )
    _assert_client_error(response, sent)


# -- KServe v2 gRPC --------------------------------------------------------------------------


@st.composite
def model_infer_requests(draw: st.DrawFn) -> Any:
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(MODEL_NAMES)),
        model_version=draw(st.sampled_from(["", "1", "2", "9", "x", "-1"])),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add()
        tensor.name = draw(st.sampled_from(TENSOR_NAMES))
        tensor.datatype = draw(st.sampled_from(DATATYPES_AND_JUNK))
        tensor.shape.extend(draw(shapes))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            field = draw(
                st.sampled_from(
                    ["fp32_contents", "int64_contents", "int_contents", "bool_contents"]
                )
            )
            values = {
                "fp32_contents": st.floats(width=32, allow_nan=False),
                "int64_contents": st.integers(-(2**63), 2**63 - 1),
                "int_contents": st.integers(-(2**31), 2**31 - 1),
                "bool_contents": st.booleans(),
            }[field]
            getattr(tensor.contents, field).extend(draw(st.lists(values, max_size=10)))
    if draw(st.booleans()):
        request.outputs.add().name = draw(st.sampled_from(TENSOR_NAMES))
    return request


def _assert_client_status(call: Any, request: Any) -> None:
    """``call(request)`` succeeds, or fails with a client status and a message."""
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        code, message = exc.code(), exc.details() or ""
    else:
        return
    assert code in CLIENT_STATUSES, f"{code}: {message} for {request}"
    assert message, f"{code} without a message for {request}"


def _huge_empty_infer() -> Any:
    request = service_pb2.ModelInferRequest(model_name="linear")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=HUGE_EMPTY)
    tensor.contents.SetInParent()
    return request


@FUZZ
@given(request=model_infer_requests())
@example(request=_huge_empty_infer())
def test_kserve_grpc_answers_any_model_infer_with_a_client_status(
    channel: grpc.Channel, request: Any
) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    _assert_client_status(stub.ModelInfer, request)


# -- TF Serving gRPC -------------------------------------------------------------------------

TF_VALUES = {
    "float_val": st.floats(width=32, allow_nan=False),
    "double_val": st.floats(allow_nan=False),
    "int_val": st.integers(-(2**31), 2**31 - 1),
    "int64_val": st.integers(-(2**63), 2**63 - 1),
    "bool_val": st.booleans(),
    "string_val": st.binary(max_size=8),
    "half_val": st.integers(0, 2**16 - 1),
}


@st.composite
def predict_requests(draw: st.DrawFn) -> Any:
    request = tf_apis.PredictRequest()
    request.model_spec.name = draw(st.sampled_from(MODEL_NAMES))
    if draw(st.booleans()):
        request.model_spec.version.value = draw(st.integers(-1, 3))
    request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "nope"]))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs[draw(st.sampled_from(TENSOR_NAMES))]
        tensor.dtype = draw(st.integers(0, 30))  # DT_INVALID, DT_FLOAT, ..., DT_RESOURCE, ...
        for size in draw(shapes):
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
        if draw(st.booleans()):
            tensor.tensor_content = draw(st.binary(max_size=64))
        else:
            field, values = draw(st.sampled_from(list(TF_VALUES.items())))
            one_or_many = st.lists(values, min_size=1, max_size=1) | st.lists(values, max_size=9)
            getattr(tensor, field).extend(draw(one_or_many))  # one value fills the shape
    request.output_filter.extend(draw(st.lists(st.sampled_from(TENSOR_NAMES), max_size=2)))
    return request


def _fill_bomb() -> Any:
    """Four bytes of values asking for 4 TiB: TensorFlow's one-value fill."""
    request = tf_apis.PredictRequest()
    request.model_spec.name = "linear"
    tensor = request.inputs["x"]
    tensor.dtype = tf_core.DT_FLOAT
    for size in (2**20, 2**20):
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.append(1.0)
    return request


@FUZZ
@given(request=predict_requests())
@example(request=_fill_bomb())
def test_tf_serving_grpc_answers_any_predict_with_a_client_status(
    channel: grpc.Channel, request: Any
) -> None:
    stub = tf_apis_grpc.PredictionServiceStub(channel)
    _assert_client_status(stub.Predict, request)


# -- afterwards --------------------------------------------------------------------------------


def test_after_the_hostile_requests_the_same_workers_answer_correctly(
    http: httpx.Client, models: Models, worker_pids: dict[str, int]
) -> None:
    """Runs last in this module (pytest keeps file order)."""
    _still_serving(http, models, worker_pids)
