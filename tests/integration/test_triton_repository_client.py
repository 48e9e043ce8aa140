"""Triton's model repository extension, driven by the official ``tritonclient`` http and grpc
clients: index, unload, load, and load of a model the config does not list (``config=``), with
the management token in their headers; without it, 401 / UNAUTHENTICATED and nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelyard.config import ServerConfig, load_config
from modelyard.testing.models import BuiltModel, model_config, write_config, write_onnx_linear
from modelyard.testing.server import serving

TOKEN = "a-long-random-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _repository(tmp_path: Path) -> tuple[ServerConfig, BuiltModel]:
    """Model ``a`` served from the config; model ``c`` on disk, for a load with ``config=``."""
    a = write_onnx_linear(tmp_path / "a" / "1", seed=1)
    c = write_onnx_linear(tmp_path / "c" / "1", seed=3)
    config_path = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("a", {1: a}, memory="30MiB")],
        devices=[{"name": "sim0", "kind": "cpu", "memory": "200MiB"}],
    )
    return load_config(config_path), c


def test_tritonclient_manages_the_repository(tmp_path: Path) -> None:
    config, c = _repository(tmp_path)
    with serving(config, management_token=TOKEN) as server:
        client = httpclient.InferenceServerClient(server.rest_url.removeprefix("http://"))
        index = client.get_model_repository_index(headers=AUTH)
        assert [(m["name"], m["state"]) for m in index] == [("a", "READY")]

        with pytest.raises(InferenceServerException, match="401"):
            client.unload_model("a")  # no token
        assert client.is_model_ready("a")

        client.unload_model("a", headers=AUTH)
        assert not client.is_model_ready("a")
        client.load_model("a", headers=AUTH)
        assert client.is_model_ready("a")

        entry = {"base_path": str(c.version_dir.parent), "platform": "onnx", "memory": "30MiB"}
        client.load_model("c", headers=AUTH, config=json.dumps(entry))
        x = c.example["x"]
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("c", [tensor]).as_numpy("y")
        np.testing.assert_allclose(got, c.reference({"x": x})["y"], rtol=1e-5)
        names = {m["name"] for m in client.get_model_repository_index(headers=AUTH)}
        assert names == {"a", "c"}


def test_tritonclient_grpc_manages_the_repository(tmp_path: Path) -> None:
    config, c = _repository(tmp_path)
    metadata = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case
    with serving(config, management_token=TOKEN) as server:
        client = grpcclient.InferenceServerClient(server.grpc_target)
        index = client.get_model_repository_index(headers=metadata, as_json=True)
        assert [(m["name"], m["state"]) for m in index["models"]] == [("a", "READY")]

        with pytest.raises(InferenceServerException) as info:
            client.unload_model("a")  # no token
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.is_model_ready("a")

        def states() -> dict[str, str]:
            index = client.get_model_repository_index(headers=metadata, as_json=True)
            return {m["name"]: m["state"] for m in index["models"]}

        client.unload_model("a", headers=metadata)
        assert states() == {"a": "UNAVAILABLE"}
        assert client.is_model_ready("a") is False  # not an error, as Triton answers
        client.load_model("a", headers=metadata)
        assert client.is_model_ready("a")

        entry = {"base_path": str(c.version_dir.parent), "platform": "onnx", "memory": "30MiB"}
        client.load_model("c", headers=metadata, config=json.dumps(entry))
        assert states() == {"a": "READY", "c": "READY"}
        x = c.example["x"]
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("c", [tensor]).as_numpy("y")
        np.testing.assert_allclose(got, c.reference({"x": x})["y"], rtol=1e-5)

    with serving(config) as server:  # management off
        client = grpcclient.InferenceServerClient(server.grpc_target)
        with pytest.raises(InferenceServerException) as info:
            client.load_model("c", headers=metadata)
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "--management-token" in info.value.message()
