"""Fault suite: nothing changes without the management token.

Every REST route the running server registered (``app.routes``) and every gRPC method it
registered is called without the token, with a wrong one and with the wrong scheme. Each one
that is not on this file's explicit list of open entry points must refuse: 401 /
UNAUTHENTICATED when a token is set, 403 / PERMISSION_DENIED when management is off, with a
message that names no host path; and afterwards the server serves exactly what it served
before. The list is by behaviour, not copied from the code: a new endpoint that answers
without the token fails here until someone decides, on this list, that it is open.

Then what the token allows is bounded: a management load (or a TF Serving config reload) may
only read models under the model roots (``--model-root``; default the folders holding the
configured models); ``/etc``, ``/proc``, a ``..`` walk and a symlink that escapes are refused.
A load that fails entirely is undone and not saved. TF Serving's GetModelStatus answers for a
model with a version folder numbered past int64.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from starlette.routing import Route

from modelyard.config import load_config
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.management import StateStore, apply_overrides
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.generated import grpc_service_pb2 as kserve_pb
from modelyard.server.grpc.server import start_grpc_server
from modelyard.testing.models import (
    BuiltModel,
    model_config,
    write_config,
    write_corrupt,
    write_onnx_linear,
)
from modelyard.testing.server import RunningServer, serving
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as tf_pb
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2_grpc as tf_grpc
from modelyard.tfproto.generated import tensorflow_serving_config_pb2 as tf_config

TOKEN = "fault-auth-token-7f3a"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BEYOND_INT64 = str(2**64 + 1)

EXPECTED_OPEN_ROUTES = {
    ("GET", "/"),
    ("GET", "/metrics"),
    ("GET", "/modelyard/v1/status"),
    ("GET", "/modelyard/v1/traffic"),
    ("GET", "/modelyard/v1/status/devices/{device:path}/report"),
    ("GET", "/v1/models/{path:path}"),
    ("POST", "/v1/models/{path:path}"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/ready"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("POST", "/v2/models/{model}/infer"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/{model}/stats"),
    ("GET", "/v2/models/{model}/versions/{version}/stats"),
    ("GET", "/v2/models/{model}/config"),
    ("GET", "/v2/models/{model}/versions/{version}/config"),
}
"""REST entry points anyone may call: each reads, none changes what is served."""

EXPECTED_OPEN_RPCS = {
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStatistics",
    "/inference.GRPCInferenceService/ModelConfig",
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
    "/tensorflow.serving.ModelService/GetModelStatus",
}
"""gRPC methods anyone may call."""

MUTATING_ROUTES = {
    ("POST", "/v2/repository/models/{model}/load"),
    ("POST", "/v2/repository/models/{model}/unload"),
    ("POST", "/modelyard/v1/models/{model}/versions/{version}/move"),
    ("POST", "/modelyard/v1/replan"),
    ("PUT", "/modelyard/v1/models/{model}/labels/{label}"),
}
MUTATING_RPCS = {
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
}
"""What the enumeration must at least find (so that an empty enumeration cannot pass)."""

ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=])/[^\s'\"/]+/")


@dataclass
class Repo:
    root: Path  # the model repository: the default model root
    outside: Path  # a folder beside it, holding a good model, outside every root
    models: dict[str, BuiltModel]
    store: StateStore


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("fault-auth")
    root = base / "repository"
    models = {n: write_onnx_linear(root / n / "1", seed=i) for i, n in enumerate("abc")}
    # b also has a version folder numbered past int64 (a copy of version 1).
    write_onnx_linear(root / "b" / BEYOND_INT64, seed=1)
    write_corrupt(root / "bad" / "1")
    outside = base / "outside"
    models["outside"] = write_onnx_linear(outside / "m" / "1", seed=9)
    (root / "escape").symlink_to(outside / "m", target_is_directory=True)
    entries = [model_config(n, {1: models[n]}, memory="10MiB") for n in "ab"]
    devices = [{"name": f"sim{i}", "kind": "cpu", "memory": "256MiB"} for i in range(2)]
    write_config(root / "modelyard.yaml", entries, devices=devices)
    return Repo(root, outside, models, StateStore(base / "state" / "state.json"))


@pytest.fixture(scope="module")
def guarded(repo: Repo) -> Iterator[RunningServer]:
    config = load_config(repo.root / "modelyard.yaml")
    with serving(config, management_token=TOKEN,
                 state_store=repo.store, poll_interval_s=0) as server:  # fmt: skip
        yield server


def _entry(base_path: Path | str) -> dict[str, Any]:
    entry = {"base_path": str(base_path), "platform": "onnx", "memory": "10MiB"}
    return {"parameters": {"config": json.dumps(entry)}}


def _http_call(method: str, path: str, repo: Repo) -> tuple[str, str, Any]:
    """A concrete request for a route: for a change, one that would succeed with the token."""
    params = {"model": "a", "version": "1", "label": "stable", "device": "sim0", "path": "a"}
    body: Any = {}
    if path.endswith("/load"):
        params["model"] = "c"
        body = _entry(repo.root / "c")
    elif path.endswith("/move"):
        body = {"from": "sim0", "to": "sim1"}
    elif "/labels/" in path:
        body = {"version": 1}
    url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: params.get(m.group(1), "x"), path)
    return method, url, body


def _grpc_request(method: str, repo: Repo) -> bytes:
    """A request for a gRPC method: for a change, one that would succeed with the token."""
    if method.endswith("/RepositoryModelUnload"):
        unload = kserve_pb.RepositoryModelUnloadRequest(model_name="a")
        return bytes(unload.SerializeToString())
    if method.endswith("/RepositoryModelLoad"):
        request = kserve_pb.RepositoryModelLoadRequest(model_name="c")
        config = json.loads(_entry(repo.root / "c")["parameters"]["config"])
        request.parameters["config"].string_param = json.dumps(config)
        return bytes(request.SerializeToString())
    if method.endswith("/HandleReloadConfigRequest"):  # drop every model
        config = tf_config.ModelServerConfig()
        config.model_config_list.SetInParent()
        return bytes(tf_pb.ReloadConfigRequest(config=config).SerializeToString())
    return b""


def _served(server: RunningServer) -> dict[str, Any]:
    """What a user sees served: the repository index and an answer from each model."""
    index = httpx.post(f"{server.rest_url}/v2/repository/index", headers=AUTH, timeout=10)
    assert index.status_code == 200, index.text
    answers = {}
    for name in "ab":
        r = httpx.post(f"{server.rest_url}/v1/models/{name}:predict",
                       json={"instances": np.ones((1, 4)).tolist()}, timeout=10)  # fmt: skip
        answers[name] = (r.status_code, r.json())
    rows = [(r["name"], r.get("version"), r["state"], r.get("devices")) for r in index.json()]
    return {"index": sorted(rows, key=str), "answers": answers}


def _no_host_path(message: str, repo: Repo) -> None:
    assert str(repo.root.parent) not in message, message
    assert not ABSOLUTE_PATH.search(message), message


def _refusals(
    server: RunningServer, repo: Repo, headers_to_try: list[dict[str, str]], status: int = 401
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(refused, answered) REST (method, route) pairs, every route tried with each header."""
    app = server.server.rest_app
    assert app is not None
    refused: set[tuple[str, str]] = set()
    answered: set[tuple[str, str]] = set()
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        for route in app.routes:
            assert isinstance(route, Route), route
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                verb, url, body = _http_call(method, route.path, repo)
                codes = []
                for headers in headers_to_try:
                    r = client.request(verb, url, json=body, headers=headers)
                    codes.append(r.status_code)
                    if r.status_code == status:
                        _no_host_path(r.json()["error"], repo)
                        if status == 401:
                            assert r.headers["www-authenticate"].startswith("Bearer")
                if all(c == status for c in codes):
                    refused.add((method, route.path))
                else:
                    assert status not in codes, f"{method} {route.path} answered {codes}"
                    answered.add((method, route.path))
    return refused, answered


def _rpc_refusals(
    server: RunningServer, repo: Repo, metadata_to_try: list[tuple[tuple[str, str], ...]]
) -> dict[str, set[grpc.StatusCode]]:
    """The status codes each registered gRPC method answered, over each metadata tried."""
    codes: dict[str, set[grpc.StatusCode]] = {}
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method in server.server.grpc_methods:
            call = channel.unary_unary(method)
            for metadata in metadata_to_try:
                try:
                    call(_grpc_request(method, repo), metadata=metadata, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        _no_host_path(exc.details(), repo)
                codes.setdefault(method, set()).add(code)
    return codes


def test_every_guarded_route_and_method_refuses_without_the_token(
    guarded: RunningServer, repo: Repo
) -> None:
    before = _served(guarded)
    start = time.monotonic()
    refused, answered = _refusals(
        guarded, repo,
        [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN},
         {"authorization": f"Basic {TOKEN}"}],
    )  # fmt: skip
    bad_metadata = [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]
    rpc_codes = _rpc_refusals(guarded, repo, bad_metadata)
    seconds = time.monotonic() - start
    assert answered == EXPECTED_OPEN_ROUTES
    assert refused >= MUTATING_ROUTES | {("POST", "/v2/repository/index")}
    rpc_refused = {m for m, c in rpc_codes.items() if c == {grpc.StatusCode.UNAUTHENTICATED}}
    rpc_open = set(rpc_codes) - rpc_refused
    assert rpc_open == EXPECTED_OPEN_RPCS, rpc_codes
    assert rpc_refused >= MUTATING_RPCS | {"/inference.GRPCInferenceService/RepositoryIndex"}
    for method in rpc_open:
        assert grpc.StatusCode.UNAUTHENTICATED not in rpc_codes[method], method
    # Nothing changed: the same models, versions, devices and answers.
    assert _served(guarded) == before
    print(f"\n{len(refused)} of {len(refused) + len(answered)} REST routes and "
          f"{len(rpc_refused)} of {len(rpc_codes)} gRPC methods refused without the token "
          f"(4 and 3 ways each) in {seconds:.2f} s; nothing changed")  # fmt: skip


def test_a_grpc_method_added_later_is_guarded_until_listed_as_open() -> None:
    """A servicer nobody told about the gate registers a method that would change things."""
    changed: list[bytes] = []

    async def change(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        changed.append(request)
        return b""

    def add(server: grpc.aio.Server) -> None:
        handlers = {"Change": grpc.unary_unary_rpc_method_handler(change)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("new.S", handlers),))
        server.add_registered_method_handlers("new.S", handlers)

    async def scenario() -> None:
        plane = DataPlane(ModelRegistry())
        server = await start_grpc_server(
            plane, "127.0.0.1", 0, max_message_bytes=1 << 20, extra_servicers=[add]
        )
        try:
            assert "/new.S/Change" in server.methods
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                call = channel.unary_unary("/new.S/Change")
                for metadata in ((), tuple(AUTH.items())):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call(b"x", metadata=metadata, timeout=10)
                    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await server.stop(0)

    asyncio.run(scenario())
    assert changed == []


def test_management_off_refuses_every_guarded_entry_with_403(repo: Repo, tmp_path: Path) -> None:
    config = load_config(repo.root / "modelyard.yaml")
    with serving(config, poll_interval_s=0) as server:
        refused, answered = _refusals(server, repo, [{}, AUTH], status=403)
        assert answered == EXPECTED_OPEN_ROUTES
        assert refused >= MUTATING_ROUTES
        rpc_codes = _rpc_refusals(server, repo, [(), tuple(AUTH.items())])
        denied = {m for m, c in rpc_codes.items() if c == {grpc.StatusCode.PERMISSION_DENIED}}
        assert set(rpc_codes) - denied == EXPECTED_OPEN_RPCS
        assert denied >= MUTATING_RPCS
        r = httpx.post(f"{server.rest_url}/modelyard/v1/replan", headers=AUTH, timeout=10)
        assert "--management-token" in r.json()["error"]
        x = np.ones((1, 4)).tolist()
        r = httpx.post(f"{server.rest_url}/v1/models/a:predict", json={"instances": x})
        assert r.status_code == 200, r.text


def test_a_management_load_outside_the_model_roots_is_refused(
    guarded: RunningServer, repo: Repo
) -> None:
    before = _served(guarded)
    saved_before = repo.store.load()
    url = f"{guarded.rest_url}/v2/repository/models"
    tries = {
        "etc": "/etc",
        "proc": "/proc/self",
        "dotdot": f"{repo.root}/a/../../outside/m",
        "escape": str(repo.root / "escape"),  # a symlink in the root to a folder outside it
    }
    with httpx.Client(headers=AUTH, timeout=60) as client:
        for name, base_path in tries.items():
            r = client.post(f"{url}/{name}/load", json=_entry(base_path))
            assert r.status_code == 403, (name, r.text)
            error = r.json()["error"]
            assert str(repo.root) in error, error
            assert base_path in error, error
            assert str(repo.outside) not in error, error  # where the symlink leads stays hidden
        channel = grpc.insecure_channel(guarded.grpc_target)
        request = kserve_pb.RepositoryModelLoadRequest(model_name="etc")
        request.parameters["config"].string_param = _entry("/etc")["parameters"]["config"]
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")(
                request.SerializeToString(), metadata=tuple(AUTH.items()), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        channel.close()
        assert _served(guarded) == before
        assert repo.store.load() == saved_before
        # Under the root: loads, serves, and unloads again.
        r = client.post(f"{url}/c/load", json=_entry(repo.root / "c"))
        assert r.status_code == 200, r.text
        assert client.post(f"{url}/c/unload").status_code == 200


def test_a_load_that_fails_entirely_is_undone_and_not_saved(
    guarded: RunningServer, repo: Repo
) -> None:
    before = _served(guarded)
    with httpx.Client(headers=AUTH, timeout=120) as client:
        start = time.monotonic()
        r = client.post(f"{guarded.rest_url}/v2/repository/models/bad/load",
                        json=_entry(repo.root / "bad"))  # fmt: skip
        seconds = time.monotonic() - start
    assert r.status_code == 400, r.text
    assert "failed to load" in r.json()["error"]
    assert _served(guarded) == before  # not listed, not placed
    saved = repo.store.load()
    assert "bad" not in saved.models
    # What a restart would serve: the config file plus the saved overrides.
    desired, _ = apply_overrides(load_config(repo.root / "modelyard.yaml"), saved)
    assert "bad" not in {m.name for m in desired.models}
    print(f"\nfailed load answered 400 in {seconds:.2f} s; not saved, not served")


def test_get_model_status_answers_for_a_version_past_int64(guarded: RunningServer) -> None:
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        stub = tf_grpc.ModelServiceStub(channel)
        for name in "ab":
            request = tf_pb.GetModelStatusRequest()
            request.model_spec.name = name
            response = stub.GetModelStatus(request, timeout=30)
            states = {s.version: s.state for s in response.model_version_status}
            assert states.get(1) == tf_pb.ModelVersionStatus.AVAILABLE, (name, states)


def test_reload_config_without_the_token_changes_nothing(
    guarded: RunningServer, repo: Repo
) -> None:
    """Last in this module: its final reload (with the token) changes the served set."""
    before = _served(guarded)

    def reload(paths: dict[str, Path | str], metadata: tuple[tuple[str, str], ...]) -> Any:
        config = tf_config.ModelServerConfig()
        for name, path in paths.items():
            entry = config.model_config_list.config.add()
            entry.name, entry.base_path, entry.model_platform = name, str(path), "onnx"
        with grpc.insecure_channel(guarded.grpc_target) as channel:
            stub = tf_grpc.ModelServiceStub(channel)
            return stub.HandleReloadConfigRequest(
                tf_pb.ReloadConfigRequest(config=config), metadata=metadata, timeout=120
            )

    hostile: dict[str, Path | str] = {"evil": "/etc"}  # every model dropped, one read from /etc
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.RpcError) as info:
            reload(hostile, metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        _no_host_path(info.value.details(), repo)
    assert _served(guarded) == before
    # With the token, a new base path must still be under the roots.
    kept = {"a": repo.root / "a", "b": repo.root / "b"}
    response = reload({**kept, **hostile}, tuple(AUTH.items()))
    assert response.status.error_code == tf_pb.PERMISSION_DENIED, response.status
    assert str(repo.root) in response.status.error_message
    assert _served(guarded) == before
    response = reload({**kept, "c": repo.root / "c"}, tuple(AUTH.items()))
    assert response.status.error_code == tf_pb.OK, response.status.error_message
    x = repo.models["c"].example["x"]
    r = httpx.post(f"{guarded.rest_url}/v1/models/c:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text


def test_model_root_flag_replaces_the_default_roots(tmp_path: Path) -> None:
    """``modelyard serve --model-root DIR`` as a user runs it: only DIR is allowed."""
    write_onnx_linear(tmp_path / "repo" / "a" / "1", seed=1)
    write_onnx_linear(tmp_path / "repo" / "c" / "1", seed=3)
    extra = write_onnx_linear(tmp_path / "allowed" / "x" / "1", seed=4)
    config = write_config(tmp_path / "repo" / "modelyard.yaml",
                          [model_config("a", {1: extra}, memory="10MiB")])  # fmt: skip
    ports = tmp_path / "ports.json"
    env = {**os.environ, "MODELYARD_MANAGEMENT_TOKEN": TOKEN,
           "MODELYARD_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", str(config), "--port", "0",
         "--rest_api_port", "0", "--ports-file", str(ports),
         "--model-root", str(tmp_path / "allowed")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ports.exists():
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            while client.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.1)
            r = client.post("/v2/repository/models/c/load", json=_entry(tmp_path / "repo" / "c"))
            assert r.status_code == 403, r.text  # the default root (repo/) is not a root now
            assert str(tmp_path / "allowed") in r.json()["error"]
            r = client.post("/v2/repository/models/x/load", json=_entry(tmp_path / "allowed" / "x"))
            assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
