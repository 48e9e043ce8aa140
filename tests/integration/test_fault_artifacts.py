"""A version's failure is that version's: corrupt artifacts, at start-up and while serving.

Ten kinds of corrupt artifact over ONNX, torch.export ``.pt2`` and TorchScript ``.pt``
(``modelyard.testing.corrupt.CORRUPT_KINDS``), a version folder named ``007``, and a version
written in two halves, against a real server with real worker processes. What a user would
notice: the server starts and serves the good models, each bad version is FAILED with a reason
naming the file and what was wrong (status API, KServe ready, TF Serving status, Triton's
repository index), requests to the serving version never fail, and management calls on other
models keep answering 200.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from modelyard.config import load_config
from modelyard.testing.cli import modelyard_plan
from modelyard.testing.corrupt import CORRUPT_KINDS, CorruptKind
from modelyard.testing.models import BuiltModel, model_config, write_config, write_onnx_linear
from modelyard.testing.server import serving

TOKEN = "fault-artifacts-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOADED_BY_WORKER = {"onnx-bad-op"}
"""Kinds that size fine and fail only when the worker loads them (the runtime refuses them)."""

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# -- helpers ------------------------------------------------------------------------------------


def _status(url: str, model: str) -> dict[int, dict[str, Any]]:
    doc = httpx.get(f"{url}/modelyard/v1/status", timeout=10).json()
    return {m["version"]: m for m in doc["models"] if m["model"] == model}


def _is_failed(url: str, version: int) -> bool:
    return bool(_status(url, "m").get(version, {}).get("state") == "FAILED")


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"not within {seconds} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def _predict(
    url: str, model: str, references: dict[int, BuiltModel], version: int | None = None
) -> int:
    """One KServe v2 inference, checked against the numpy reference of the version that
    answered (one of ``references``); returns that version."""
    x = next(iter(references.values())).example["x"]
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "")
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(f"{url}{path}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()
    answered = int(doc["model_version"])
    assert answered in references, f"answered by version {answered}"
    out = doc["outputs"][0]
    got = np.asarray(out["data"], np.float32).reshape(out["shape"])
    want = references[answered].reference({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return answered


def _assert_failed_with_reason(url: str, kind: CorruptKind, version: int = 1) -> str:
    entry = _status(url, kind.name)[version]
    assert entry["state"] == "FAILED", (kind.name, entry)
    reason = str(entry["error"])
    assert kind.reason in reason.lower(), (kind.name, reason)
    if kind.name not in LOADED_BY_WORKER:
        assert kind.artifact in reason, (kind.name, reason)  # names the file
    return reason


@dataclass
class Load:
    """Threads calling ``model`` with no version, each answer checked against the reference of
    the version that answered."""

    url: str
    model: str
    references: dict[int, BuiltModel]
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, threads: int = 2) -> Load:
        for _ in range(threads):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                _predict(self.url, self.model, self.references)
            except Exception as exc:  # counted: the test asserts there are none
                self.failed.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            self.latencies.append(time.monotonic() - start)
            self.ok += 1


@dataclass
class Management:
    """A thread that unloads and loads ``model`` and lists the repository, over and over."""

    url: str
    model: str
    answers: list[tuple[str, int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Management:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    @property
    def not_ok(self) -> list[tuple[str, int, float]]:
        return [a for a in self.answers if a[1] != 200]

    def _loop(self) -> None:
        calls = [f"/v2/repository/models/{self.model}/unload",
                 f"/v2/repository/models/{self.model}/load", "/v2/repository/index"]  # fmt: skip
        with httpx.Client(timeout=60, headers=AUTH) as client:
            while not self._stop.is_set():
                for path in calls:
                    start = time.monotonic()
                    status = client.post(f"{self.url}{path}").status_code
                    self.answers.append((path, status, time.monotonic() - start))
                time.sleep(0.1)


# -- a repository with every kind of corrupt artifact ---------------------------------------------


@dataclass(frozen=True)
class Repository:
    config: Path
    good: BuiltModel
    zeros: BuiltModel
    """The model in version folder ``007``: served as version 7, as TF Serving reads it."""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    root = tmp_path_factory.mktemp("corrupt-repo")
    good = write_onnx_linear(root / "good" / "1", in_features=4, out_features=3, seed=1)
    zeros = write_onnx_linear(root / "zeros" / "007", in_features=4, out_features=3, seed=7)
    models = [model_config("good", {1: good}), model_config("zeros", {7: zeros})]
    for kind in CORRUPT_KINDS:
        kind.write(root / kind.name / "1")
        models.append({"name": kind.name, "base_path": kind.name})  # platform: auto
    config = write_config(
        root / "modelyard.yaml", models, devices=[{"name": "sim0", "kind": "cpu", "memory": "1GiB"}]
    )
    return Repository(config, good, zeros)


def test_ten_corrupt_artifacts_at_start_up_fail_alone_and_the_rest_serves(
    repository: Repository,
) -> None:
    config = load_config(repository.config)
    started = time.monotonic()
    with serving(config, management_token=TOKEN, poll_interval_s=0) as server:
        start_s = time.monotonic() - started
        plan = server.server.start_plan
        assert plan.feasible, plan.explanation
        unreadable = {u.key.model for u in plan.unreadable}
        assert unreadable == {k.name for k in CORRUPT_KINDS} - LOADED_BY_WORKER
        url = server.rest_url
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        _predict(url, "good", {1: repository.good})
        assert _status(url, "zeros")[7]["state"] == "AVAILABLE"
        _predict(url, "zeros", {7: repository.zeros}, version=7)
        index = httpx.post(f"{url}/v2/repository/index", headers=AUTH, timeout=10).json()
        rows = {r["name"]: r for r in index}
        reasons = {}
        for kind in CORRUPT_KINDS:
            reasons[kind.name] = _assert_failed_with_reason(url, kind)
            ready = httpx.get(f"{url}/v2/models/{kind.name}/ready", timeout=5)
            assert ready.status_code == 503, (kind.name, ready.text)
            assert rows[kind.name]["state"] == "FAILED"
            assert kind.reason in rows[kind.name]["reason"].lower()
        print(f"\nstart-up with {len(CORRUPT_KINDS)} corrupt models beside 2 good ones: "
              f"{start_s:.1f} s; reasons:")  # fmt: skip
        for name, reason in reasons.items():
            print(f"  {name}: {reason}")


def test_the_cli_serves_beside_corrupt_versions_and_plan_lists_them(
    repository: Repository, tmp_path: Path
) -> None:
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")}
    planned = modelyard_plan(repository.config, "--json", cache_dir=tmp_path / "cache")
    assert planned.returncode == 3, planned.stderr  # the rest fits; some cannot be read
    doc = json.loads(planned.stdout)
    assert doc["feasible"] is True
    listed = {u["model"]: u["reason"] for u in doc["unreadable"]}
    assert set(listed) == {k.name for k in CORRUPT_KINDS} - LOADED_BY_WORKER
    assert "cannot be read" in planned.stderr

    ports = tmp_path / "ports.json"
    command = [sys.executable, "-m", "modelyard", "serve", str(repository.config), "--port", "0",
               "--rest_api_port", "0", "--ports-file", str(ports),
               "--file_system_poll_wait_seconds", "0"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ports.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"
        _predict(url, "good", {1: repository.good})
        _predict(url, "zeros", {7: repository.zeros}, version=7)
        for kind in CORRUPT_KINDS:
            _assert_failed_with_reason(url, kind)
            # TF Serving's status API shows a failed load as END with the error, as TF Serving does.
            tf = httpx.get(f"{url}/v1/models/{kind.name}", timeout=5).json()
            [status] = tf["model_version_status"]
            assert status["state"] == "END", (kind.name, tf)
            assert kind.reason in status["status"]["error_message"].lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


# -- while serving ---------------------------------------------------------------------------------


def _drop_in(base: Path, version: int, write: Callable[[Path], Any]) -> None:
    """Write a version beside the base path, then rename it in (whole, at once)."""
    staging = base.parent / f".staging-{base.name}-{version}"
    write(staging)
    os.rename(staging, base / str(version))


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[Path, BuiltModel, BuiltModel]:
    m = write_onnx_linear(tmp_path / "m" / "1", in_features=4, out_features=3, seed=1)
    other = write_onnx_linear(tmp_path / "other" / "1", in_features=4, out_features=3, seed=2)
    config = write_config(
        tmp_path / "modelyard.yaml",
        [{"name": "m", "base_path": "m", "version_policy": {"latest": 1}},  # sized from files
         model_config("other", {1: other})],
        devices=[{"name": "sim0", "kind": "cpu", "memory": "1GiB"}],
    )  # fmt: skip
    return config, m, other


def test_corrupt_new_versions_under_load_fail_no_request_and_management_keeps_answering(
    two_models: tuple[Path, BuiltModel, BuiltModel],
) -> None:
    config_path, m, _ = two_models
    config = load_config(config_path)
    base = config_path.parent / "m"
    with serving(config, management_token=TOKEN,
                 poll_interval_s=0.2) as server:  # fmt: skip
        url = server.rest_url
        load = Load(url, "m", {1: m}).start()
        management = Management(url, "other").start()
        to_failed: dict[str, float] = {}
        try:
            for version, kind in enumerate(CORRUPT_KINDS, start=2):
                dropped = time.monotonic()
                _drop_in(base, version, kind.write)
                _wait(functools.partial(_is_failed, url, version),
                      20, f"{kind.name} as m:{version} FAILED")  # fmt: skip
                to_failed[kind.name] = time.monotonic() - dropped
                reason = str(_status(url, "m")[version]["error"]).lower()
                assert kind.reason in reason, (kind.name, reason)
        finally:
            load.stop()
            management.stop()
        assert _status(url, "m")[1]["state"] == "AVAILABLE"
        _wait(lambda: _status(url, "other").get(1, {}).get("state") == "AVAILABLE", 30, "other")
    slowest = max(a[2] for a in management.answers)
    p99 = float(np.percentile(load.latencies, 99))
    print(f"\n{len(CORRUPT_KINDS)} corrupt versions dropped in under load: {load.ok} requests to "
          f"m:1, {len(load.failed)} failed, p99 {p99 * 1000:.0f} ms; {len(management.answers)} "
          f"management calls on 'other', {len(management.not_ok)} not 200, slowest "
          f"{slowest:.2f} s; drop-in to FAILED "
          f"{min(to_failed.values()):.2f}-{max(to_failed.values()):.2f} s")  # fmt: skip
    assert not load.failed, load.failed[:5]
    assert load.ok > 50
    assert not management.not_ok, management.not_ok[:5]
    assert len(management.answers) >= 9


def test_a_version_written_in_two_halves_becomes_available_once_complete(
    two_models: tuple[Path, BuiltModel, BuiltModel], tmp_path: Path
) -> None:
    config_path, m, _ = two_models
    config = load_config(config_path)
    base = config_path.parent / "m"
    v2 = write_onnx_linear(tmp_path / "staging2", in_features=4, out_features=3, seed=22)
    v3 = write_onnx_linear(tmp_path / "staging3", in_features=4, out_features=3, seed=33)
    with serving(config, poll_interval_s=0.2) as server:
        url = server.rest_url
        load = Load(url, "m", {1: m, 2: v2, 3: v3}).start(1)
        try:
            # A: the second half comes 0.4 s after the first (within the settle time):
            # never FAILED, AVAILABLE once complete.
            seen: set[str] = set()
            data = v2.artifact.read_bytes()
            (base / "2").mkdir()
            (base / "2" / "model.onnx").write_bytes(data[: len(data) // 2])
            time.sleep(0.4)
            with (base / "2" / "model.onnx").open("ab") as f:
                f.write(data[len(data) // 2 :])
            complete = time.monotonic()

            def available(v: int) -> bool:
                state = str(_status(url, "m").get(v, {}).get("state"))
                seen.add(state)
                return state == "AVAILABLE"

            _wait(lambda: available(2), 15, "v2 AVAILABLE")
            a_s = time.monotonic() - complete
            assert "FAILED" not in seen, seen
            _wait(lambda: 1 not in _status(url, "m"), 10, "v1 unloaded")

            # B: the second half comes late (after the settle time): FAILED with the reason,
            # then loaded again once the file is complete, without a restart.
            data = v3.artifact.read_bytes()
            (base / "3").mkdir()
            (base / "3" / "model.onnx").write_bytes(data[: len(data) // 2])
            _wait(lambda: _status(url, "m").get(3, {}).get("state") == "FAILED", 15, "v3 FAILED")
            assert "not a valid onnx model" in _status(url, "m")[3]["error"].lower()
            with (base / "3" / "model.onnx").open("ab") as f:
                f.write(data[len(data) // 2 :])
            complete = time.monotonic()
            _wait(lambda: available(3), 15, "v3 AVAILABLE after its file was completed")
            b_s = time.monotonic() - complete
        finally:
            load.stop()
        _predict(url, "m", {3: v3}, version=3)
    print(f"\nhalf-written version: AVAILABLE {a_s:.2f} s after its last write, never FAILED; "
          f"a FAILED half version retried and AVAILABLE {b_s:.2f} s after completion; "
          f"{load.ok} requests, {len(load.failed)} failed")  # fmt: skip
    assert not load.failed, load.failed[:5]


def test_sizing_a_large_new_version_keeps_the_front_end_flat_and_responsive(
    two_models: tuple[Path, BuiltModel, BuiltModel], tmp_path: Path
) -> None:
    """A 128 MiB ONNX version is sized by walking its protobuf, on a thread: the front end's
    memory does not grow by the model's size and requests to the small model keep flowing."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    config_path, m, _ = two_models
    weights = np.zeros((4, 8 * 2**20 // 2), np.float32)  # 4 x 4 Mi floats = 64 MiB, twice
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]),
         onnx.helper.make_node("MatMul", ["x", "w2"], ["y"])],
        "big",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(weights, "w2")],
    )  # fmt: skip
    staging = tmp_path / "big"
    staging.mkdir()
    onnx.save(onnx.helper.make_model(graph), str(staging / "model.onnx"))
    del graph, weights
    size = (staging / "model.onnx").stat().st_size
    # Room for v1 but not for the big version: it is sized, then waits for room (never loads).
    config = load_config(
        write_config(
            config_path,
            [{"name": "m", "base_path": "m", "version_policy": {"latest": 1}}],
            devices=[{"name": "sim0", "kind": "cpu", "memory": "128MiB"}],
        )
    )
    # The first plan that does not fit imports the planner's solver (OR-Tools, about 80 MiB,
    # once per process): imported here first, so that the figure is sizing's alone.
    if importlib.util.find_spec("ortools") is not None:
        importlib.import_module("ortools.sat.python.cp_model")
    me = psutil.Process()
    with serving(config, poll_interval_s=0.2) as server:
        url = server.rest_url
        load = Load(url, "m", {1: m}).start(1)
        peak = [me.memory_info().rss]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak.append(me.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        time.sleep(0.5)
        before = me.memory_info().rss
        baseline = list(load.latencies)
        sampler.start()
        try:
            os.rename(staging, config_path.parent / "m" / "2")
            _wait(lambda: bool(_status(url, "m").get(2, {}).get("error")), 15, "v2 sized")
            time.sleep(0.3)
        finally:
            sampling.set()
            sampler.join(5)
            load.stop()
        during = load.latencies[len(baseline) :]
        reason = _status(url, "m")[2]["error"]
        assert _status(url, "m")[1]["state"] == "AVAILABLE"
    grew = max(peak) - before
    print(f"\nsizing a {size / 2**20:.0f} MiB ONNX version: front end RSS +{grew / 2**20:.1f} MiB; "
          f"request max {max(during) * 1000:.0f} ms (before {max(baseline) * 1000:.0f} ms), "
          f"{len(load.failed)} failed; v2: {reason}")  # fmt: skip
    assert "waiting for room" in reason  # sized (bytes named), not read as a whole
    assert grew < size / 4, f"the front end grew by {grew} bytes sizing a {size}-byte model"
    assert not load.failed, load.failed[:5]
    assert max(during) < 1.0  # the old sizing held the loop about 1 s per 381 MiB
