"""TF Serving drop-in: SavedModels exported here, a models.config, ``modelyard serve`` as a
subprocess, and TF Serving's own clients (``tensorflow-serving-api`` over gRPC, REST bodies
shaped as in TF Serving's docs) get what in-process TensorFlow computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")

from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from modelyard.testing.tf_models import (  # noqa: E402
    export_classify_regress,
    export_half_plus_two,
    export_strings,
)

TOKEN = "drop-in-management-token"
"""HandleReloadConfigRequest changes the server: it needs the management token."""


def _models_config(entries: dict[str, Path]) -> str:
    configs = "".join(
        f"  config {{\n    name: '{name}'\n    base_path: '{path}'\n"
        "    model_platform: 'tensorflow'\n  }\n"
        for name, path in entries.items()
    )
    return f"model_config_list {{\n{configs}}}\n"


class Served:
    def __init__(self, root: Path, process: subprocess.Popen[bytes], ports: dict[str, int]):
        self.root = root
        self.process = process
        self.rest = f"http://127.0.0.1:{ports['rest']}"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tfserving")
    export_half_plus_two(root / "half_plus_two")
    export_strings(root / "strings")
    export_classify_regress(root / "census")
    config = root / "models.config"
    config.write_text(
        _models_config(
            {
                "half_plus_two": root / "half_plus_two",
                "strings": root / "strings",
                "census": root / "census",
            }
        )
    )
    ports_file = root / "ports.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard",
            "serve",
            f"--model_config_file={config}",
            "--port",
            "0",
            "--rest_api_port",
            "0",
            "--ports-file",
            str(ports_file),
            "--tensorflow_intra_op_parallelism=2",
        ],
        # The test's own cache: measured footprints of its temporary models stay out of ~/.cache.
        env={
            **os.environ,
            "MODELYARD_MANAGEMENT_TOKEN": TOKEN,
            "MODELYARD_CACHE_DIR": str(root / "cache"),
        },
        stdout=subprocess.DEVNULL,
        stderr=(root / "server.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 120
        while not ports_file.exists():
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        served = Served(root, process, json.loads(ports_file.read_text()))
        while httpx.get(f"{served.rest}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        yield served
        served.channel.close()
    finally:
        process.terminate()
        process.wait(timeout=60)


def _predict(served: Served, model: str, inputs: dict[str, Any], **spec: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return served.predict.Predict(request, timeout=30)


def test_grpc_predict_equals_in_process_tensorflow(served: Served) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    loaded = tf.saved_model.load(str(served.root / "half_plus_two" / "1"))
    expected = loaded.signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    response = _predict(served, "half_plus_two", {"x": x})
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), expected)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.version.value == 1


def test_grpc_predict_strings(served: Served) -> None:
    text = np.array([b"drop", "in \xe9".encode()], dtype=object)
    response = _predict(served, "strings", {"text": text})
    assert list(tf.make_ndarray(response.outputs["upper"])) == [b"DROP", "IN \xe9".encode()]
    assert list(tf.make_ndarray(response.outputs["length"])) == [4, 5]


def test_grpc_metadata_and_status(served: Served) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "half_plus_two"
    response = served.predict.GetModelMetadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(defs)
    default = defs.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 3]
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "half_plus_two"
    status = served.models.GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]


def test_grpc_unknown_model_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _predict(served, "nope", {"x": np.zeros((1, 3), np.float32)})
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_rest_requests_as_in_tf_servings_docs(served: Served) -> None:
    url = f"{served.rest}/v1/models/half_plus_two"
    rows = httpx.post(f"{url}:predict", json={"instances": [[1.0, 2.0, 5.0]]}).json()
    assert rows == {"predictions": [[2.5, 3.0, 4.5]]}
    columns = httpx.post(
        f"{url}:predict", json={"signature_name": "serving_default", "inputs": {"x": [[1, 2, 5]]}}
    ).json()
    assert columns == {"outputs": [[2.5, 3.0, 4.5]]}
    strings = httpx.post(
        f"{served.rest}/v1/models/strings/versions/1:predict",
        json={"instances": [{"b64": "ZHJvcA=="}, "in"]},
    ).json()
    assert strings["predictions"] == [{"length": 4, "upper": "DROP"}, {"length": 2, "upper": "IN"}]
    status = httpx.get(url).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


EXAMPLES = [(1.0, 2.0), (-0.5, 0.25)]


def _expected_scores(x: tuple[float, float]) -> list[float]:
    """What census's classify signature computes: softmax([-s, s]) with s = x0 + x1."""
    s = x[0] + x[1]
    e = np.exp([-s, s])
    return list(e / e.sum())


def test_rest_classify_and_regress_through_the_worker(served: Served) -> None:
    url = f"{served.rest}/v1/models/census"
    examples = [{"x": list(x)} for x in EXAMPLES]
    classify = httpx.post(
        f"{url}:classify", json={"signature_name": "classify", "examples": examples}
    )
    assert classify.status_code == 200, classify.text
    for x, pairs in zip(EXAMPLES, classify.json()["result"], strict=True):
        assert [label for label, _ in pairs] == ["neg", "pos"]
        np.testing.assert_allclose([score for _, score in pairs], _expected_scores(x), rtol=1e-5)
    regress = httpx.post(f"{url}:regress", json={"signature_name": "regress", "examples": examples})
    assert regress.status_code == 200, regress.text
    np.testing.assert_allclose(
        regress.json()["result"], [x[0] * 3 + x[1] for x in EXAMPLES], rtol=1e-5
    )
    # A predict-only model has no classify signature: a 400 that says so, not a wrong answer.
    wrong = httpx.post(
        f"{served.rest}/v1/models/half_plus_two:classify", json={"examples": examples}
    )
    assert wrong.status_code == 400, wrong.text


def test_grpc_classify_and_regress_with_the_official_client(served: Served) -> None:
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    def examples(request: Any) -> None:
        for x in EXAMPLES:
            example = request.input.example_list.examples.add()
            example.features.feature["x"].float_list.value.extend(x)

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "census", "classify"
    examples(classify)
    result = served.predict.Classify(classify, timeout=30).result
    for x, classes in zip(EXAMPLES, result.classifications, strict=True):
        assert [c.label for c in classes.classes] == ["neg", "pos"]
        np.testing.assert_allclose(
            [c.score for c in classes.classes], _expected_scores(x), rtol=1e-5
        )

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "census", "regress"
    examples(regress)
    values = [r.value for r in served.predict.Regress(regress, timeout=30).result.regressions]
    np.testing.assert_allclose(values, [x[0] * 3 + x[1] for x in EXAMPLES], rtol=1e-5)


def test_reload_config_adds_and_removes_without_failing_the_staying_model(served: Served) -> None:
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        x = np.ones((1, 3), np.float32)
        while not stop.is_set():
            try:
                response = _predict(served, "half_plus_two", {"x": x})
                assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5, 2.5, 2.5]]
                done += 1
            except Exception as exc:  # any failure of the staying model fails the test
                failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        config = model_server_config_pb2.ModelServerConfig()
        kept_and_added = (
            ("half_plus_two", "half_plus_two"),
            ("census", "census"),
            ("half_plus_two_copy", "half_plus_two"),
        )
        for name, path in kept_and_added:
            entry = config.model_config_list.config.add()
            entry.name, entry.base_path = name, str(served.root / path)
            entry.model_platform = "tensorflow"
        request = model_management_pb2.ReloadConfigRequest(config=config)
        with pytest.raises(grpc.RpcError) as refused:  # no token: refused, nothing changes
            served.models.HandleReloadConfigRequest(request, timeout=120)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert httpx.get(f"{served.rest}/v1/models/strings").status_code == 200
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        response = served.models.HandleReloadConfigRequest(request, metadata=metadata, timeout=120)
        assert response.status.error_code == 0, response.status.error_message
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert done > 0
    # The added model serves; strings is gone.
    added = httpx.post(
        f"{served.rest}/v1/models/half_plus_two_copy:predict", json={"instances": [[2.0, 4.0, 6.0]]}
    )
    assert added.json() == {"predictions": [[3.0, 4.0, 5.0]]}, added.text
    gone = httpx.get(f"{served.rest}/v1/models/strings")
    assert gone.status_code == 404, gone.text
