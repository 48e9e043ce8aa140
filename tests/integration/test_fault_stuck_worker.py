"""A worker that stops answering (a real SIGSTOP) is found by the heartbeat and replaced, and
nothing else notices; shutdown with a stopped worker still ends in time; workers never hold the
management token.

Two CPU devices with memory budgets, one model pinned to each (and a second one on the healthy
device for a management call). Figures are printed (``pytest -s``) for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from modelyard.config import load_config
from modelyard.testing.models import BuiltModel, model_config, write_config, write_onnx_linear
from modelyard.testing.server import serving
from modelyard.workers.heartbeat import HeartbeatPolicy

TOKEN = "stuck-test-token"
HEARTBEAT = HeartbeatPolicy()
DETECTION_S = HEARTBEAT.timeout_s + HEARTBEAT.interval_s
"""The longest a stuck worker goes unnoticed, by design."""


def _repository(tmp_path: Path) -> tuple[Path, dict[str, BuiltModel]]:
    built = {
        "a": write_onnx_linear(tmp_path / "a" / "1", seed=1),
        "b": write_onnx_linear(tmp_path / "b" / "1", seed=2),
        "b2": write_onnx_linear(tmp_path / "b2" / "1", seed=3),
    }
    config = write_config(
        tmp_path / "modelyard.yaml",
        [
            model_config("a", {1: built["a"]}, memory="10MiB", devices=["sim0"]),
            model_config("b", {1: built["b"]}, memory="10MiB", devices=["sim1"]),
            model_config("b2", {1: built["b2"]}, memory="10MiB", devices=["sim1"]),
        ],
        devices=[{"name": f"sim{i}", "kind": "cpu", "memory": "512MiB"} for i in range(2)],
    )
    return config, built


def _worker_pids(parent: int) -> dict[str, int]:
    """device name -> pid of the live worker processes under ``parent``."""
    found: dict[str, int] = {}
    for child in psutil.Process(parent).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            for arg in child.cmdline():
                if arg.startswith("--device="):
                    found[arg.partition("=")[2]] = child.pid
    return found


def _release(pid: int | None) -> None:
    """Never leave a stopped process behind, whatever the test found."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Call:
    model: str
    started: float
    seconds: float
    status: int
    body: str


class Load:
    """Clients sending predict requests to one model in a loop until told to stop."""

    def __init__(self, url: str, model: str, built: BuiltModel, clients: int = 1) -> None:
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._body = {"instances": built.example["x"][:1].tolist()}
        self._url = f"{url}/v1/models/{model}:predict"
        self._model = model
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    r = client.post(self._url, json=self._body)
                    status, body = r.status_code, r.text
                except httpx.HTTPError as exc:
                    status, body = 0, repr(exc)
                self.calls.append(
                    Call(self._model, started, time.monotonic() - started, status, body)
                )
                if status != 200:
                    time.sleep(0.01)  # a failing model answers at once: do not spin

    def stop(self) -> list[Call]:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)
            assert not thread.is_alive(), f"a request to {self._model} hangs"
        return list(self.calls)


def _ready(url: str, model: str) -> bool:
    return httpx.get(f"{url}/v2/models/{model}/ready", timeout=5).status_code == 200


def test_a_stopped_worker_is_found_failed_fast_and_replaced(tmp_path: Path) -> None:
    config_path, built = _repository(tmp_path)
    config = load_config(config_path)
    stopped: int | None = None
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(config, management_token=TOKEN) as server:
        try:
            url = server.rest_url
            pids = _worker_pids(os.getpid())
            assert set(pids) == {"sim0", "sim1"}
            sick, healthy = Load(url, "a", built["a"]), Load(url, "b", built["b"])
            time.sleep(1.0)  # both serving under load

            stopped = pids["sim0"]
            os.kill(stopped, signal.SIGSTOP)
            t0 = time.monotonic()

            # Management of the other device meanwhile: unload and load back a model on sim1.
            time.sleep(0.5)
            started = time.monotonic()
            r = httpx.post(f"{url}/v2/repository/models/b2/unload", headers=auth, timeout=30)
            unload_s = time.monotonic() - started
            assert r.status_code == 200, r.text
            started = time.monotonic()
            r = httpx.post(f"{url}/v2/repository/models/b2/load", headers=auth, timeout=30)
            load_s = time.monotonic() - started
            assert r.status_code == 200, r.text
            load_at = started - t0  # before the heartbeat's timeout: sim0 was still stuck

            not_ready_s = _until(lambda: not _ready(url, "a"), t0, 10)
            status = httpx.get(f"{url}/v1/models/a", timeout=5).json()
            tf_state = status["model_version_status"][0]["state"]
            grpc_ready, grpc_code, grpc_s = _grpc_while_down(server.grpc_target, built["a"])
            serving_again_s = _until(lambda: _serves(url, built["a"]), t0, 30)
            calls_a, calls_b = sick.stop(), healthy.stop()
            _check_replaced_process(stopped, _worker_pids(os.getpid())["sim0"])
        finally:
            _release(stopped)

    failed_a = [c for c in calls_a if c.status != 200 and c.started < t0 + not_ready_s]
    print(
        f"\nstuck worker: b {len(calls_b)} requests, "
        f"{sum(c.status == 200 for c in calls_b)} ok, max {max(c.seconds for c in calls_b):.3f} s;"
        f" a {len(calls_a)} requests, {len(failed_a)} failed before not-ready, slowest failure "
        f"{max((c.seconds for c in failed_a), default=0):.2f} s; not ready after "
        f"{not_ready_s:.2f} s (TF Serving state {tf_state}); serving again after "
        f"{serving_again_s:.2f} s; management on sim1 while stuck: unload {unload_s:.3f} s, "
        f"load {load_s:.3f} s; gRPC infer while down: {grpc_code} in {grpc_s:.3f} s"
    )
    # The healthy device never noticed.
    assert calls_b
    assert all(c.status == 200 for c in calls_b), [c for c in calls_b if c.status != 200]
    # The stuck device's requests failed fast, with a 503 naming the device and the reason.
    assert failed_a, "no request reached the stuck worker"
    for call in (c for c in calls_a if c.status != 200):
        assert call.status == 503, call
        assert call.seconds <= DETECTION_S + 1.0, call
    assert any("sim0" in c.body and "heartbeat" in c.body for c in failed_a), failed_a[:3]
    assert not_ready_s <= 5.0
    assert tf_state != "AVAILABLE"
    assert not grpc_ready
    assert "UNAVAILABLE" in grpc_code
    assert grpc_s < 1.0
    assert serving_again_s <= 15.0
    assert unload_s < 1.0  # started 0.5 s after SIGSTOP: all of it while sim0 was stuck
    assert load_at < HEARTBEAT.timeout_s
    # A load runs a model load on sim1 (slower on a loaded box); it never waits for sim0.
    assert load_s < HEARTBEAT.timeout_s


def _until(condition: Callable[[], bool], t0: float, limit_s: float) -> float:
    """Seconds from ``t0`` until ``condition()`` holds (polled every 50 ms, up to the limit)."""
    while not condition():
        assert time.monotonic() - t0 < limit_s, f"not within {limit_s} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def _grpc_while_down(target: str, built: BuiltModel) -> tuple[bool, str, float]:
    """KServe gRPC on the replaced worker's model: ready?, an infer's status code, its time."""
    x = built.example["x"][:1]
    client = grpcclient.InferenceServerClient(target)
    try:
        ready = client.is_model_ready("a")
        tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        started = time.monotonic()
        try:
            client.infer("a", [tensor], client_timeout=30)
            code = "OK"
        except InferenceServerException as exc:
            code = str(exc.status())
        return ready, code, time.monotonic() - started
    finally:
        client.close()


def _serves(url: str, built: BuiltModel) -> bool:
    x = built.example["x"][:1]
    r = httpx.post(f"{url}/v1/models/a:predict", json={"instances": x.tolist()}, timeout=10)
    return r.status_code == 200 and _close(r.json()["predictions"], built.reference({"x": x})["y"])


def _close(got: object, expected: np.ndarray) -> bool:
    return bool(np.allclose(np.asarray(got, dtype=np.float32), expected, rtol=1e-5))


def _check_replaced_process(stopped: int, replaced: int) -> None:
    """A new process serves the device, and the stopped one was killed (by the server: this
    runs before the test's own clean-up kills it)."""
    assert replaced != stopped
    with contextlib.suppress(psutil.NoSuchProcess):
        assert psutil.Process(stopped).status() == psutil.STATUS_ZOMBIE


def test_management_on_a_stuck_device_holds_the_others_only_until_the_heartbeat(
    tmp_path: Path,
) -> None:
    """Management calls are serialised (one lock), so a call that needs the stuck worker (unload
    its model: drain its requests, unload it there) holds the next one; the heartbeat bounds
    both: the first ends when the worker is found stuck, the next right after."""
    config_path, built = _repository(tmp_path)
    config = load_config(config_path)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    stopped: int | None = None
    with serving(config, management_token=TOKEN) as server:
        url = server.rest_url
        try:
            stopped = _worker_pids(os.getpid())["sim0"]
            hanging = Load(url, "a", built["a"])  # a request in flight that the unload drains
            time.sleep(0.3)
            os.kill(stopped, signal.SIGSTOP)
            answers: dict[str, tuple[int, float]] = {}

            def unload(model: str) -> None:
                started = time.monotonic()
                r = httpx.post(
                    f"{url}/v2/repository/models/{model}/unload", headers=auth, timeout=30
                )
                answers[model] = (r.status_code, time.monotonic() - started)

            first = threading.Thread(target=unload, args=("a",))
            first.start()
            time.sleep(0.5)
            unload("b2")  # on the healthy device, queued behind the first
            first.join(30)
            hanging.stop()
        finally:
            _release(stopped)
    print(
        f"\nmanagement while sim0 is stuck: unload a (on sim0) {answers['a'][1]:.2f} s, "
        f"unload b2 (on sim1, sent 0.5 s later) {answers['b2'][1]:.2f} s"
    )
    assert answers["a"][0] == 200
    assert answers["b2"][0] == 200
    assert answers["a"][1] <= DETECTION_S + 1.0
    assert answers["b2"][1] <= DETECTION_S + 1.0


def test_sigterm_with_a_stopped_worker_exits_0_in_time(tmp_path: Path) -> None:
    """Through the CLI, with the management token (and another secret) in its environment:
    the workers do not inherit them; SIGTERM while a worker is SIGSTOPped exits 0 in time."""
    from modelyard.cli.serve import DRAIN_TIMEOUT_S

    config_path, built = _repository(tmp_path)
    ports = tmp_path / "ports.json"
    env = {
        **os.environ,
        "MODELYARD_CACHE_DIR": str(tmp_path / "cache"),
        "MODELYARD_MANAGEMENT_TOKEN": TOKEN,
        "DATABASE_PASSWORD": "hunter2",
    }
    command = [sys.executable, "-m", "modelyard", "serve", str(config_path), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--rest_api_port", "0", "--ports-file", str(ports)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stopped: int | None = None
    try:
        deadline = time.monotonic() + 120
        while not ports.exists():
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = f"http://127.0.0.1:{json.loads(ports.read_text())['rest']}"
        pids = _worker_pids(proc.pid)
        assert set(pids) == {"sim0", "sim1"}

        for pid in pids.values():  # what each worker process really holds
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {item.partition(b"=")[0].decode() for item in environ if item}
            assert "MODELYARD_MANAGEMENT_TOKEN" not in names
            assert "DATABASE_PASSWORD" not in names
            assert not any(TOKEN.encode() in item or b"hunter2" in item for item in environ)
            assert "PATH" in names

        stopped = pids["sim0"]
        os.kill(stopped, signal.SIGSTOP)
        waiting = Load(url, "a", built["a"])
        time.sleep(0.3)  # a request is in flight to the stopped worker
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(DRAIN_TIMEOUT_S + 30)
        exit_s = time.monotonic() - signalled
        waiting.stop()
        print(f"\nSIGTERM with a stopped worker: exit {code} after {exit_s:.2f} s")
        assert code == 0
        assert exit_s <= DRAIN_TIMEOUT_S + 5
        time.sleep(0.5)
        assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() in (
            psutil.STATUS_ZOMBIE,
            psutil.STATUS_DEAD,
        ), "the stopped worker was left behind"
    finally:
        _release(stopped)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_heartbeat_tells_a_busy_process_from_a_stuck_one() -> None:
    """On real processes, as the heartbeat samples a silent worker: one that keeps computing
    (a regex that backtracks: a C call that holds the GIL, as a big model's load can) is busy,
    not stuck; a SIGSTOPped one and one blocked forever are stuck."""
    from modelyard.workers.heartbeat import HeartbeatWatch, Verdict, sample_process

    policy = HeartbeatPolicy(interval_s=0.25, timeout_s=1.5, busy_timeout_s=60.0)
    programs = {
        "computing": "import re; re.match(r'(a*)*b', 'a' * 40)",
        "stopped": "import time; time.sleep(60)",
        "blocked": "import threading; threading.Event().wait(60)",
    }
    procs = {
        name: subprocess.Popen([sys.executable, "-c", code]) for name, code in programs.items()
    }
    try:
        time.sleep(0.5)  # past interpreter start-up
        os.kill(procs["stopped"].pid, signal.SIGSTOP)
        start = time.monotonic()
        watches = {name: HeartbeatWatch(policy, start) for name in procs}
        verdicts = dict.fromkeys(procs, Verdict.ALIVE)
        while time.monotonic() - start < policy.timeout_s + 1.0:
            time.sleep(policy.interval_s)
            now = time.monotonic()
            for name, proc in procs.items():
                if verdicts[name] is not Verdict.STUCK:
                    verdicts[name] = watches[name].judge(
                        now, functools.partial(sample_process, proc.pid)
                    )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert verdicts == {
        "computing": Verdict.BUSY,
        "stopped": Verdict.STUCK,
        "blocked": Verdict.STUCK,
    }, {name: watches[name].why for name in procs}


def test_a_busy_process_first_looked_at_past_the_timeout_is_not_stuck() -> None:
    """The CI flake: the front end's loop was held (a loaded machine, a server's start-up), so
    the heartbeat's first look at a silent worker came with the silence already past the
    timeout. That look was both the CPU baseline and the verdict: "used 0.00 s of CPU", stuck,
    killed while it was busy starting. A real process computing with the GIL held (as a
    framework import does) is judged the same way here: busy once its CPU has been measured."""
    from modelyard.workers.heartbeat import HeartbeatWatch, Verdict, sample_process

    policy = HeartbeatPolicy()  # the server's defaults
    code = "import re; re.match(r'(a*)*b', 'a' * 40)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)  # past interpreter start-up: computing now
        start = time.monotonic()
        watch = HeartbeatWatch(policy, start - policy.timeout_s - 0.6)  # last heard 3.6 s ago
        sample = functools.partial(sample_process, proc.pid)
        verdict = watch.judge(start, sample)
        assert verdict.name == "ALIVE", watch.why  # was STUCK: "used 0.00 s of CPU"
        while time.monotonic() - start < 2 * policy.cpu_window_s and verdict is Verdict.ALIVE:
            time.sleep(policy.interval_s)
            verdict = watch.judge(time.monotonic(), sample)
        assert verdict is Verdict.BUSY, watch.why
    finally:
        proc.kill()
        proc.wait()
