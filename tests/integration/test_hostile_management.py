"""Hostile calls to the management API (with the right token): whatever the body, path or model
entry, the answer is a success or a 4xx with a message, never a 500, and the server serves on.

Hypothesis builds the calls: Triton's repository extension (index, load with any
``parameters.config``, unload) and modelyard's move, label and replan, over a real server with
two small models on two CPU devices.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.config import load_config
from modelyard.testing.models import model_config, write_config, write_onnx_linear
from modelyard.testing.server import RunningServer, serving

TOKEN = "hostile-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root = tmp_path_factory.mktemp("hostile-management")
    linear = write_onnx_linear(root / "linear" / "1", seed=1)
    write_onnx_linear(root / "extra" / "1", seed=2)
    config_path = write_config(
        root / "modelyard.yaml",
        [model_config("linear", {1: linear}, memory="10MiB")],
        devices=[{"name": f"sim{i}", "kind": "cpu", "memory": "256MiB"} for i in range(2)],
    )
    config = load_config(config_path)
    with serving(
        config,
        management_token=TOKEN,
        state_store=None,
        poll_interval_s=0,
    ) as server:
        yield server, root


@pytest.fixture(scope="module")
def http(served: tuple[RunningServer, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0].rest_url, timeout=60, headers=AUTH) as client:
        yield client


MODEL_NAMES = st.sampled_from(["linear", "extra", "nope", "", "a/b", "..", "é", "x" * 300])


def _entries(root: Path) -> st.SearchStrategy[Any]:
    """Model entries as a user might get them wrong: each key of the YAML with any value."""
    paths = st.sampled_from([str(root / "extra"), str(root / "linear"), "relative", "/no/such", ""])
    return st.fixed_dictionaries(
        {},
        optional={
            "base_path": paths | json_values,
            "platform": st.sampled_from(["onnx", "torchscript", "tensorflow", "x"]) | json_values,
            "memory": st.sampled_from(["30MiB", "0", "-1", "1e99GiB", "ten"]) | json_values,
            "devices": st.lists(st.sampled_from(["sim0", "sim1", "gpu7", ""]), max_size=3)
            | json_values,
            "replicas": st.integers(-2, 4) | json_values,
            "version_policy": json_values,
            "batching": st.fixed_dictionaries(
                {}, optional={"max_batch_size": st.integers(-1, 2**40) | json_values}
            )
            | json_values,
            "signature": json_values,
            "swap": json_values,
        },
    )


@st.composite
def calls(draw: st.DrawFn, root: Path) -> tuple[str, str, Any]:
    model = quote(draw(MODEL_NAMES), safe="")
    kind = draw(st.sampled_from(["index", "load", "unload", "move", "label", "replan"]))
    body: Any = draw(json_values)
    if kind == "index":
        return "POST", "/v2/repository/index", body
    if kind == "load":
        entry = draw(_entries(root))
        config = draw(st.sampled_from(["string", "object", "junk"]))
        if config == "string":
            body = {"parameters": {"config": json.dumps(entry)}}
        elif config == "object":
            body = {"parameters": {"config": entry}}
        return "POST", f"/v2/repository/models/{model}/load", body
    if kind == "unload":
        return "POST", f"/v2/repository/models/{model}/unload", body
    if kind == "move":
        version = draw(st.sampled_from(["1", "2", "0", "-1", "x"]))
        devices = st.sampled_from(["sim0", "sim1", "gpu7", ""]) | json_values
        if draw(st.booleans()):
            body = {"from": draw(devices), "to": draw(devices)}
        return "POST", f"/modelyard/v1/models/{model}/versions/{version}/move", body
    if kind == "label":
        label = quote(draw(st.sampled_from(["stable", "", "x y", "é"])), safe="")
        if draw(st.booleans()):
            body = {"version": draw(st.integers(-1, 3) | json_values)}
        return "PUT", f"/modelyard/v1/models/{model}/labels/{label}", body
    return "POST", "/modelyard/v1/replan", body


def test_management_calls_get_a_4xx_or_succeed(
    http: httpx.Client, served: tuple[RunningServer, Path]
) -> None:
    root = served[1]

    @FUZZ
    @given(call=calls(root))
    def check(call: tuple[str, str, Any]) -> None:
        method, path, body = call
        sent = json.dumps(body).encode()
        response = http.request(method, path, content=sent)
        where = f"{method} {path} with {sent[:300]!r}"
        assert response.status_code < 500 or response.status_code == 507, (
            f"{response.status_code} {response.text[:300]} for {where}"
        )
        if response.status_code >= 400:
            error = response.json().get("error")
            assert isinstance(error, str), where
            assert error, where

    check()
    # The calls may have unloaded the configured model (a legitimate call): it loads again
    # by name and answers.
    assert http.post("/v2/repository/index", content=b"").status_code == 200
    response = http.post("/v2/repository/models/linear/load", content=b"")
    assert response.status_code == 200, response.text
    x = np.ones((2, 4), np.float32)
    response = http.post("/v1/models/linear:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    assert np.asarray(response.json()["predictions"]).shape == (2, 2)
