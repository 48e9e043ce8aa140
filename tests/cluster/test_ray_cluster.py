"""modelyard over a real local Ray cluster: a head and two worker nodes on 127.0.0.1.

One cluster for the module (starting one costs seconds per node on 2 cores): each worker node
has its own custom resource (``nodeA``, ``nodeB``), a small object store and one CPU; the config
declares two CPU devices with memory budgets on each worker node and serves 12 small ONNX
models. Every node listens on 127.0.0.1 only and the dashboard is off.

The tests run in order: ``modelyard plan`` against the cluster (no worker starts), then serving
(answers on three protocols, the status API's nodes, Ray's own state API), then one worker node
killed under load.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no traffic beyond loopback
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install ray)")
httpx = pytest.importorskip("httpx")
grpcclient = pytest.importorskip("tritonclient.grpc")

from ray._private.state import actors as gcs_actors  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from modelyard.cli.main import main  # noqa: E402
from modelyard.cluster.connect import with_ray_address  # noqa: E402
from modelyard.config import load_config  # noqa: E402
from modelyard.testing.models import BuiltModel, write_onnx_int64_affine  # noqa: E402
from modelyard.testing.server import RunningServer, serving  # noqa: E402

MiB = 2**20
MODELS = 12
MODEL_BYTES = 10 * MiB
DEVICE_BYTES = 45 * MiB
"""Room for 4 models per device (headroom 5%): 16 slots for 12 models, so losing a node whose
two devices held k models leaves k - 4 free slots on the other: k - 4 move, 4 are FAILED."""
DEVICES = {"a0": "nodeA", "a1": "nodeA", "b0": "nodeB", "b1": "nodeB"}
NODE_ARGS: dict[str, Any] = {
    "node_ip_address": "127.0.0.1",
    "object_store_memory": 80 * MiB,
    "num_cpus": 1,
}


@dataclass
class Deployment:
    cluster: Any
    nodes: dict[str, Any]
    config: Path
    models: dict[str, BuiltModel]
    server: RunningServer | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("cluster")
    models = {
        f"m{i:02d}": write_onnx_int64_affine(root / f"m{i:02d}" / "1", scale=i + 2, offset=i)
        for i in range(MODELS)
    }
    devices = "".join(
        f"  - {{name: {d}, kind: cpu, memory: {DEVICE_BYTES}, node: {n}}}\n"
        for d, n in DEVICES.items()
    )
    lines = "".join(
        f"  - {{name: {m}, base_path: {root / m}, memory: {MODEL_BYTES}}}\n" for m in models
    )
    config = root / "cluster.yaml"
    config.write_text(f"devices:\n{devices}models:\n{lines}")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **NODE_ARGS,
            "include_dashboard": False,
            # Node loss is noticed in about 1.5 s instead of Ray's default 15 s or more.
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    # Both worker nodes start at once; two CPUs each, so Ray keeps two idle worker processes
    # started per node for the test's job (the probes and actors take them, not a cold start).
    nodes = {
        label: cluster.add_node(**{**NODE_ARGS, "num_cpus": 2}, resources={label: 1}, wait=False)
        for label in ("nodeA", "nodeB")
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="modelyard", log_to_driver=False)
    deployment = Deployment(cluster, nodes, config, models)
    try:
        yield deployment
    finally:
        if "exit" in deployment.notes:  # the server the serving test started
            deployment.notes["exit"].__exit__(None, None, None)
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


def worker_actors() -> dict[str, str]:
    """Ray's own record of modelyard's live worker actors (the GCS actor table; the state API
    of ``ray.util.state`` needs the dashboard, which tests keep off): actor name -> node id."""
    table = gcs_actors(actor_state_name="ALIVE")
    return {
        info["Name"]: info["Address"]["NodeID"]
        for info in table.values()
        if info.get("Name", "").startswith("worker:")
    }


def test_plan_against_the_cluster_prints_nodes_and_placement(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI's own entry point, in this process: it joins the cluster this test process is
    # connected to (a second Ray job would cold-start worker processes on every node).
    plan = ["plan", str(deployment.config), "--ray-address", deployment.cluster.address]
    assert main(plan) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "3 node(s) in the Ray cluster" in out
    for label in ("nodeA", "nodeB"):
        assert f"  {label}  id " in out
    for device, node in DEVICES.items():
        assert f"{device} (cpu on node {node})" in out
    assert sum(f"m{i:02d}:1" in out for i in range(MODELS)) == MODELS
    assert worker_actors() == {}  # planning started no worker


def expected(built: BuiltModel, x: np.ndarray) -> np.ndarray:
    return np.asarray(built.reference({"x": x})["y"])


def answers(server: RunningServer, name: str, built: BuiltModel, x: np.ndarray) -> None:
    """The model's answer over TF Serving REST, KServe REST and tritonclient gRPC equals the
    reference computed in this process."""
    want = expected(built, x)
    with httpx.Client(base_url=server.rest_url, timeout=30) as http:
        tf = http.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
        assert tf.status_code == 200, tf.text
        assert np.array_equal(np.asarray(tf.json()["predictions"]), want)
        body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}  # fmt: skip
        kserve = http.post(f"/v2/models/{name}/infer", json=body)
        assert kserve.status_code == 200, kserve.text
        out = kserve.json()["outputs"][0]
        assert np.array_equal(np.asarray(out["data"]).reshape(out["shape"]), want)
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        tensor = grpcclient.InferInput("x", list(x.shape), "INT64")
        tensor.set_data_from_numpy(x)
        result = client.infer(name, [tensor], client_timeout=30)
        assert np.array_equal(result.as_numpy("y"), want)
    finally:
        client.close()


def test_serves_every_model_from_workers_on_their_nodes(deployment: Deployment) -> None:
    started = time.monotonic()
    config = with_ray_address(load_config(deployment.config), deployment.cluster.address)
    server_cm = serving(config, start_timeout=180)
    server = server_cm.__enter__()
    deployment.server = server
    deployment.notes["exit"] = server_cm
    deployment.notes["start_s"] = time.monotonic() - started
    x = np.array([[1, -2, 3], [2**40, 0, -7]], dtype=np.int64)
    for name, built in deployment.models.items():
        answers(server, name, built, x)
    status = httpx.get(f"{server.rest_url}/modelyard/v1/status", timeout=30).json()
    by_device = {d["name"]: d for d in status["devices"]}
    assert {d: by_device[d]["node"] for d in DEVICES} == DEVICES
    held = {m["model"]: m["devices"] for m in status["models"]}
    assert sorted(held) == sorted(deployment.models)
    # Ray's own view (its GCS actor table): each device's worker actor lives on its node.
    node_ids = {label: node.node_id for label, node in deployment.nodes.items()}
    actors = {name.split(":")[1]: node for name, node in worker_actors().items()}
    used = sorted({d for devices in held.values() for d in devices})
    assert sorted(actors) == used
    for device in used:
        assert actors[device] == node_ids[DEVICES[device]], device
    # An actor killed (what Ray does to a lost node's processes): its worker dies with it, the
    # device's models fail fast meanwhile, and it is restarted on the same node.
    device = next(d for d in used if DEVICES[d] == "nodeA")
    victim = next(n for n in worker_actors() if n.startswith(f"worker:{device}:"))
    mine = sorted(m for m, on in held.items() if device in on)
    ray.kill(ray.get_actor(victim, namespace="modelyard"))
    killed_at = time.monotonic()
    for _ in range(240):
        now = httpx.get(f"{server.rest_url}/modelyard/v1/status", timeout=30).json()
        worker = next(d for d in now["devices"] if d["name"] == device)
        models = {m["model"]: m["state"] for m in now["models"]}
        if worker["restarts"] >= 1 and all(models[m] == "AVAILABLE" for m in mine):
            break
        assert time.monotonic() - killed_at < 60, now
        time.sleep(0.25)
    deployment.notes["actor_restart_s"] = time.monotonic() - killed_at
    assert "died" in worker["last_exit"] or "closed" in worker["last_exit"], worker
    again = {n.split(":")[1]: (n, node) for n, node in worker_actors().items()}
    assert again[device][0] != victim
    assert again[device][1] == node_ids["nodeA"]
    answers(server, mine[0], deployment.models[mine[0]], x)


@dataclass
class Tally:
    ok: int = 0
    wrong: int = 0
    failed: int = 0
    slowest_failure_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def hammer(url: str, name: str, built: BuiltModel, stop: threading.Event, tally: Tally) -> None:
    x = np.array([[3, 1, 4]], dtype=np.int64)
    want = expected(built, x).ravel().tolist()
    body = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 3], "data": [3, 1, 4]}]}
    with httpx.Client(base_url=url, timeout=20) as http:
        for _ in range(100_000):
            if stop.is_set():
                return
            began = time.monotonic()
            try:
                reply = http.post(f"/v2/models/{name}/infer", json=body)
            except httpx.HTTPError as exc:
                tally.failed += 1
                tally.errors.append(repr(exc))
                continue
            took = time.monotonic() - began
            if reply.status_code == 200:
                if reply.json()["outputs"][0]["data"] == want:
                    tally.ok += 1
                else:
                    tally.wrong += 1
            else:
                tally.failed += 1
                tally.slowest_failure_s = max(tally.slowest_failure_s, took)
                if len(tally.errors) < 5:
                    tally.errors.append(f"{reply.status_code} {reply.text[:200]}")
                time.sleep(0.05)


def states(url: str) -> dict[str, dict[str, Any]]:
    status = httpx.get(f"{url}/modelyard/v1/status", timeout=30).json()
    return {m["model"]: m for m in status["models"]}


def test_a_lost_node_moves_what_fits_and_fails_the_rest(deployment: Deployment) -> None:
    server = deployment.server
    if server is None:
        pytest.skip("the serving test did not start the server")
    before = states(server.rest_url)
    lost_devices = {"b0", "b1"}
    on_lost = sorted(m for m, s in before.items() if set(s["devices"]) & lost_devices)
    survivors = sorted(set(before) - set(on_lost))
    assert len(on_lost) >= 4  # the other node holds at most 8
    stop = threading.Event()
    tallies = {m: Tally() for m in before}
    threads = [
        threading.Thread(
            target=hammer,
            args=(server.rest_url, m, deployment.models[m], stop, tallies[m]),
            daemon=True,
        )
        for m in before
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    deployment.cluster.remove_node(deployment.nodes["nodeB"], allow_graceful=False)
    settled: dict[str, dict[str, Any]] = {}
    while time.monotonic() - killed_at < 60:
        now = states(server.rest_url)
        if all(now[m]["state"] in ("AVAILABLE", "FAILED") and
               not set(now[m]["devices"]) & lost_devices for m in on_lost):  # fmt: skip
            settled = now
            break
        time.sleep(0.5)
    recovered_s = time.monotonic() - killed_at
    time.sleep(1.0)  # the moved models serve under load for a moment
    stop.set()
    for t in threads:
        t.join(30)
    assert settled, f"not settled within 60 s: {states(server.rest_url)}"
    moved = [m for m in on_lost if settled[m]["state"] == "AVAILABLE"]
    failed = [m for m in on_lost if settled[m]["state"] == "FAILED"]
    assert len(failed) == 4, settled
    assert len(moved) == len(on_lost) - 4
    for m in failed:
        assert "node nodeB lost" in settled[m]["error"]
        assert "do not fit the remaining devices" in settled[m]["error"]
    for m in moved:
        assert set(settled[m]["devices"]) <= {"a0", "a1"}
    assert sum(t.wrong for t in tallies.values()) == 0
    deployment.notes["failed"] = failed
    for m in survivors:
        assert tallies[m].failed == 0, (m, tallies[m].errors)
        assert tallies[m].ok > 0, m
    for m in on_lost:
        assert tallies[m].slowest_failure_s < 5.0, (m, tallies[m])  # failed fast
    x = np.array([[5, 6, 7]], dtype=np.int64)
    for m in moved:
        answers(server, m, deployment.models[m], x)
    print(f"\nstart {deployment.notes['start_s']:.1f} s; actor restart "
          f"{deployment.notes['actor_restart_s']:.1f} s; lost node settled in "
          f"{recovered_s:.1f} s; moved {moved}; failed {failed}")  # fmt: skip


def test_a_node_back_serves_the_models_that_did_not_fit(deployment: Deployment) -> None:
    server = deployment.server
    failed = deployment.notes.get("failed")
    if server is None or not failed:
        pytest.skip("the lost-node test did not run to its end")
    joined_at = time.monotonic()
    deployment.cluster.add_node(**{**NODE_ARGS, "num_cpus": 2}, resources={"nodeB": 1})
    now: dict[str, dict[str, Any]] = {}
    while time.monotonic() - joined_at < 90:
        now = states(server.rest_url)
        if all(now[m]["state"] == "AVAILABLE" for m in failed):
            break
        time.sleep(0.5)
    assert all(now[m]["state"] == "AVAILABLE" for m in failed), now
    for m in failed:
        assert set(now[m]["devices"]) <= {"b0", "b1"}, now[m]
    x = np.array([[9, -9, 0]], dtype=np.int64)
    for m in failed:
        answers(server, m, deployment.models[m], x)
    print(f"\nnode back: the {len(failed)} FAILED models served again in "
          f"{time.monotonic() - joined_at:.1f} s")  # fmt: skip
