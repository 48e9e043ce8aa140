"""Lifecycle as users see it: hot swap under load, a corrupt version, the management API.

Real servers on 127.0.0.1, real worker processes, ONNX models with numpy references. Load
loops run in threads for a bounded time; every answer is checked against the reference of the
version that says it answered.
"""

from __future__ import annotations

import json
import os
import shutil
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
from prometheus_client.parser import text_string_to_metric_families

from modelyard.config import load_config
from modelyard.management import StateStore
from modelyard.testing.models import (
    BuiltModel,
    model_config,
    write_config,
    write_corrupt,
    write_onnx_linear,
)
from modelyard.testing.server import serving

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _drop_in(base: Path, version: int, write: Callable[[Path], Any]) -> Any:
    """Write a version beside the base path, then rename it in: pollers never see half a model."""
    staging = base.parent / f".staging-{base.name}-{version}"
    built = write(staging)
    os.rename(staging, base / str(version))
    return built


@dataclass
class Load:
    """Threads calling a model with no version; each answer checked against ``references``."""

    url: str
    model: str
    references: dict[int, BuiltModel]
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    versions_seen: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, threads: int = 3) -> Load:
        for t in range(threads):
            thread = threading.Thread(target=self._loop, args=(t,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                x = rng.standard_normal((2, 4)).astype(np.float32)
                body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                    "data": x.ravel().tolist()}]}  # fmt: skip
                try:
                    r = client.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
                except httpx.HTTPError as exc:
                    self.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self.failed.append(f"{r.status_code}: {r.text}")
                    continue
                doc = r.json()
                version = int(doc["model_version"])
                out = doc["outputs"][0]
                got = np.asarray(out["data"], np.float32).reshape(out["shape"])
                want = self.references[version].reference({"x": x})["y"]
                if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                    self.failed.append(f"wrong answer from version {version}")
                    continue
                self.ok += 1
                self.versions_seen.append(version)


def _status(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{url}/modelyard/v1/status", timeout=5).json()
    return doc


def _versions(url: str, model: str) -> dict[int, dict[str, Any]]:
    return {m["version"]: m for m in _status(url)["models"] if m["model"] == model}


def _wait(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"not within {seconds} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_hot_swap_under_load_fails_no_request_and_a_corrupt_version_never_replaces(
    tmp_path: Path,
) -> None:
    base = tmp_path / "m"
    v1 = write_onnx_linear(base / "1", in_features=4, out_features=3, seed=1)
    config_path = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("m", {1: v1}, memory="30MiB", version_policy={"latest": 1})],
        devices=[{"name": "sim0", "kind": "cpu", "memory": "100MiB"}],
    )
    config = load_config(config_path)
    with serving(config, poll_interval_s=0.2) as server:
        url = server.rest_url
        load = Load(url, "m", {1: v1}).start()
        time.sleep(1.0)
        dropped = time.monotonic()
        v2 = _drop_in(base, 2, lambda d: write_onnx_linear(d, 4, 3, seed=2))
        load.references[2] = v2
        swap_s = _wait(lambda: 2 in load.versions_seen, 10, "v2 serves")
        _wait(lambda: 1 not in _versions(url, "m"), 10, "v1 unloads")
        unloaded_s = time.monotonic() - dropped
        served_v1 = load.versions_seen.count(1)
        time.sleep(0.5)
        # A corrupt v3: v2 keeps serving, v3 shows FAILED with the reason.
        _drop_in(base, 3, lambda d: write_corrupt(d))
        _wait(lambda: _versions(url, "m").get(3, {}).get("state") == "FAILED", 10, "v3 FAILED")
        time.sleep(0.5)
        load.stop()
        print(f"\nswap: v2 first answer {swap_s:.2f} s after drop-in, v1 unloaded after "
              f"{unloaded_s:.2f} s; {load.ok} good answers, {len(load.failed)} failed")  # fmt: skip
        assert not load.failed, load.failed[:5]
        assert served_v1 > 10
        assert load.versions_seen[-1] == 2
        versions = _versions(url, "m")
        assert versions[2]["state"] == "AVAILABLE"
        assert "cannot be loaded by onnxruntime" in versions[3]["error"]
        tf = httpx.get(f"{url}/v1/models/m", timeout=5).json()["model_version_status"]
        by_version = {s["version"]: s for s in tf}
        assert by_version["2"]["state"] == "AVAILABLE"
        assert by_version["3"]["state"] == "END"
        assert "cannot be loaded" in by_version["3"]["status"]["error_message"]
        # Management is off on this server: 403 says how to turn it on.
        r = httpx.post(f"{url}/v2/repository/index", headers=AUTH, timeout=5)
        assert r.status_code == 403
        assert "--management-token" in r.json()["error"]


@dataclass(frozen=True)
class Repo:
    config: Path
    models: dict[str, BuiltModel]
    extra: Path


def _managed_repo(root: Path) -> Repo:
    models = {
        name: write_onnx_linear(root / name / "1", 4, 3, seed=i)
        for i, name in enumerate(["a", "b", "c"])
    }
    entries = [model_config(n, {1: models[n]}, memory="30MiB") for n in ("a", "b")]
    devices = [{"name": f"sim{i}", "kind": "cpu", "memory": "100MiB"} for i in range(3)]
    config = write_config(root / "modelyard.yaml", entries, devices=devices)
    return Repo(config, models, root / "c")


def _c_entry(repo: Repo, memory: str = "30MiB", **extra: Any) -> dict[str, Any]:
    entry = {"base_path": str(repo.extra), "platform": "onnx", "memory": memory, **extra}
    return {"parameters": {"config": json.dumps(entry)}}


def _planned_bytes(url: str) -> float:
    """Sum over devices of ``modelyard_device_planned_bytes`` on ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "modelyard_device_planned_bytes"
    )


def _index(url: str) -> dict[str, dict[str, Any]]:
    rows = httpx.post(f"{url}/v2/repository/index", headers=AUTH, timeout=5).json()
    return {r["name"]: r for r in rows}


def test_management_api_changes_models_under_load_without_failing_the_others(
    tmp_path: Path,
) -> None:
    repo = _managed_repo(tmp_path)
    config = load_config(repo.config)
    store = StateStore(tmp_path / "state" / "state.json")
    with serving(config, management_token=TOKEN,
                 state_store=store, poll_interval_s=0) as server:  # fmt: skip
        url = server.rest_url
        before = _index(url)
        # Wrong or missing token: 401, nothing changes.
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            r = httpx.post(f"{url}/v2/repository/models/a/unload", headers=headers, timeout=5)
            assert r.status_code == 401, r.text
        assert _index(url) == before
        loads = [Load(url, n, {1: repo.models[n]}).start(2) for n in ("a", "b")]
        with httpx.Client(timeout=60, headers=AUTH) as client:
            planned_before = _planned_bytes(url)
            r = client.post(f"{url}/v2/repository/models/c/load", json=_c_entry(repo))
            assert r.status_code == 200, r.text
            # /metrics follows the plan in force, not the one the server started with.
            assert _planned_bytes(url) == planned_before + 30 * 2**20
            assert json.loads(store.path.read_text())["models"]["c"]["added"] is not None
            x = repo.models["c"].example["x"]
            body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                "data": x.ravel().tolist()}]}  # fmt: skip
            r = client.post(f"{url}/v2/models/c/infer", json=body)
            assert r.status_code == 200
            # Move a to a device it is not on: load there first, then drain the source.
            [source] = _versions(url, "a")[1]["devices"]
            target = next(d for d in ("sim0", "sim1", "sim2") if d != source)
            r = client.post(f"{url}/modelyard/v1/models/a/versions/1/move",
                            json={"from": source, "to": target})  # fmt: skip
            assert r.status_code == 200, r.text
            assert _versions(url, "a")[1]["devices"] == [target]
            r = client.put(f"{url}/modelyard/v1/models/b/labels/stable", json={"version": 1})
            assert r.status_code == 200, r.text
            assert client.post(f"{url}/v1/models/b/labels/stable:predict",
                               json={"instances": x.tolist()}).status_code == 200  # fmt: skip
            # Over capacity: refused at once with the planner's reason; nothing evicted.
            r = client.post(f"{url}/v2/repository/models/big/load",
                            json=_c_entry(repo, memory="500MiB"))  # fmt: skip
            assert r.status_code == 507, r.text
            assert "big" in r.json()["error"]
            assert {n: _index(url)[n]["state"] for n in "abc"} == dict.fromkeys("abc", "READY")
            r = client.post(f"{url}/modelyard/v1/replan")
            assert r.status_code == 200, r.text
            r = client.post(f"{url}/v2/repository/models/c/unload")
            assert r.status_code == 200
            # An added model, unloaded, is forgotten (a config file model would stay listed).
            assert "c" not in _index(url)
            assert client.post(f"{url}/v2/models/c/infer", json=body).status_code == 404
        for load in loads:
            load.stop()
        for load in loads:
            assert load.ok > 20
            assert not load.failed, load.failed[:5]
        saved = json.loads(store.path.read_text())["models"]
        assert "c" not in saved
        assert saved["a"]["devices"] == [target]
        assert saved["b"]["labels"] == {"stable": 1}


def test_twenty_load_unload_cycles_keep_the_worker_rss_flat(tmp_path: Path) -> None:
    repo = _managed_repo(tmp_path)
    config = load_config(repo.config)
    with (
        serving(config, management_token=TOKEN, poll_interval_s=0) as server,
        httpx.Client(timeout=60, headers=AUTH) as client,
    ):
        url = server.rest_url
        entry = _c_entry(repo, devices=["sim2"])

        def cycle() -> None:
            assert client.post(f"{url}/v2/repository/models/c/load", json=entry).status_code == 200
            assert client.post(f"{url}/v2/repository/models/c/unload").status_code == 200

        cycle()
        pid = next(d["pid"] for d in _status(url)["devices"] if d["name"] == "sim2")
        first = psutil.Process(pid).memory_info().rss
        start = time.monotonic()
        for _ in range(19):
            cycle()
        seconds = time.monotonic() - start
        last = psutil.Process(pid).memory_info().rss
        growth = (last - first) / 2**20
        mib = (first / 2**20, last / 2**20)
        print(f"\n19 load/unload cycles in {seconds:.1f} s; worker RSS {mib[0]:.0f} -> "
              f"{mib[1]:.0f} MiB ({growth:+.1f} MiB, {growth / 19:+.2f} MiB/cycle)")  # fmt: skip
        assert growth <= 100


def _serve(repo: Repo, root: Path, ports: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELYARD_CACHE_DIR": str(root / "cache")}
    return subprocess.Popen(
        [sys.executable, "-m", "modelyard", "serve", str(repo.config), "--port", "0",
         "--rest_api_port", "0", "--ports-file", str(ports), "--log-level", "WARNING",
         "--management-token", TOKEN, "--state-dir", str(root / "state"),
         "--file_system_poll_wait_seconds", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _url_of(proc: subprocess.Popen[bytes], ports: Path) -> str:
    deadline = time.monotonic() + 60
    while not ports.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"


def test_an_acknowledged_load_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    repo = _managed_repo(tmp_path)
    procs = []
    try:
        ports = tmp_path / "ports1.json"
        procs.append(_serve(repo, tmp_path, ports))
        url = _url_of(procs[-1], ports)
        r = httpx.post(f"{url}/v2/repository/models/c/load", json=_c_entry(repo),
                       headers=AUTH, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        workers = [d["pid"] for d in _status(url)["devices"] if d["pid"]]
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(10)
        # Its workers see the socket close and exit: none is orphaned.
        _wait(lambda: not any(_alive(p) for p in workers), 10, "workers exit after kill -9")
        ports = tmp_path / "ports2.json"
        procs.append(_serve(repo, tmp_path, ports))
        url = _url_of(procs[-1], ports)
        _wait(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 60, "ready")
        assert _index(url)["c"]["state"] == "READY"
        x = repo.models["c"].example["x"]
        r = httpx.post(f"{url}/v1/models/c:predict", json={"instances": x.tolist()}, timeout=10)
        assert r.status_code == 200
        got = np.asarray(r.json()["predictions"], np.float32)
        assert np.allclose(got, repo.models["c"].reference({"x": x})["y"], atol=1e-5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tight(tmp_path: Path, **extra: Any) -> tuple[Path, BuiltModel]:
    """One 60 MiB model on a 100 MiB device: two versions of it never fit side by side."""
    base = tmp_path / "m"
    v1 = write_onnx_linear(base / "1", in_features=4, out_features=3, seed=1)
    config_path = write_config(
        tmp_path / "modelyard.yaml",
        [model_config("m", {1: v1}, memory="60MiB", version_policy={"latest": 1}, **extra)],
        devices=[{"name": "sim0", "kind": "cpu", "memory": "100MiB"}],
    )
    return config_path, v1


def test_without_room_for_both_the_default_swap_keeps_v1_and_says_why(tmp_path: Path) -> None:
    config_path, v1 = _tight(tmp_path)
    config = load_config(config_path)
    with serving(config, poll_interval_s=0.2) as server:
        url = server.rest_url
        load = Load(url, "m", {1: v1}).start(2)
        _drop_in(tmp_path / "m", 2, lambda d: write_onnx_linear(d, 4, 3, seed=2))
        # What is promised is the reason and v1 kept, not how soon: the whole test takes 2.5 s
        # alone (3.1 s beside three busy loops on the two cores), but once, in CI's first
        # minute with both test processes busy, this wait passed 10 s (cause not found;
        # session 14's closing note).
        _wait(lambda: bool(_versions(url, "m").get(2, {}).get("error")), 30, "v2's reason")
        time.sleep(0.5)
        load.stop()
        versions = _versions(url, "m")
        assert versions[1]["state"] == "AVAILABLE"
        assert versions[2]["state"] != "AVAILABLE"
        assert "sim0" in versions[2]["error"]  # the planner's reason names the device
        assert not load.failed, load.failed[:5]
        assert set(load.versions_seen) == {1}


def test_resource_swap_unloads_first_and_only_ever_answers_503_in_the_gap(tmp_path: Path) -> None:
    config_path, v1 = _tight(tmp_path, swap="resource")
    config = load_config(config_path)
    with serving(config, poll_interval_s=0.2) as server:
        url = server.rest_url
        load = Load(url, "m", {1: v1}).start(2)
        time.sleep(0.5)
        v2 = _drop_in(tmp_path / "m", 2, lambda d: write_onnx_linear(d, 4, 3, seed=2))
        load.references[2] = v2
        _wait(lambda: 2 in load.versions_seen, 10, "v2 serves")
        _wait(lambda: 1 not in _versions(url, "m"), 10, "v1 is gone")
        time.sleep(0.3)
        load.stop()
        # While neither version held the memory, requests were refused, never answered wrongly.
        assert all(f.startswith("503") for f in load.failed), load.failed[:5]
        assert load.versions_seen[-1] == 2
        assert _versions(url, "m")[2]["state"] == "AVAILABLE"
