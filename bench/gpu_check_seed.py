"""The seed scenario: one GPU cut into 4 memory-capped devices, 12 large models, 3 per device.

What it does, in order (each figure lands in the step's JSON; a failed check does not stop the
ones after it unless the server itself is gone):

1. builds the 12 torch.export MLPs here (``gpu_check_models``), each with its in-process answer;
2. plans them (``modelyard plan --json``) as served, and again at the default headroom;
3. ``modelyard serve``: cold start (command to all AVAILABLE), each device's planned models,
   each worker's own report (where the weights are, bytes allocated, each load's seconds),
   estimates against what each load measured, and every model's answer against its own;
4. SIGKILLs one worker: the other devices' models must keep answering, correctly, while it is
   down; then how long until its models are back;
5. loads the slowest device's models one after another in a fresh process (nothing else
   running): that device's own sequential loads, to set against the cold start's wall time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from gpu_check_models import BuildJob, MlpShape, build_parallel, load_expected
from gpu_check_serve import Served, ServeFailed, plan_json, serve_env, write_config

ANSWER_RTOL = 1e-3
ANSWER_ATOL = 1e-4
"""FP32 on either side, same operators; the margin covers a different GEMM kernel choice."""


def run(profile: Any, work: Path, raw: Path) -> dict[str, Any]:
    """The whole scenario; returns ``{"checks": {name: bool}, "figures": {...}, ...}``, and
    writes it to ``raw/seed.json`` after each phase too (a run killed at its time box keeps
    what it measured)."""
    result: dict[str, Any] = {"checks": {}, "figures": {}, "errors": []}

    def save() -> None:
        (raw / "seed.json").write_text(json.dumps(result, indent=1, default=str))

    checks, figures = result["checks"], result["figures"]
    shape = MlpShape.of_bytes(profile.model_bytes)
    names = [f"m{i:02d}" for i in range(profile.models)]
    figures["model_weight_bytes"] = shape.weight_bytes
    figures["model_layers"] = list(shape.layers)

    # 1. build
    jobs = _jobs(names, work, shape)
    figures["distinct_artifacts"] = sum(1 for j in jobs if not j.link_to)
    began = time.monotonic()
    records = build_parallel(jobs, shape, profile.reference_device, profile.build_processes)
    figures["build_s"] = round(time.monotonic() - began, 2)
    (raw / "seed_build.json").write_text(json.dumps(records, indent=1))
    save()

    # 2. plan
    devices = [
        {
            "name": f"slice{i}",
            "kind": profile.device_kind,
            "index": 0,
            "memory": profile.slice_memory,
        }
        for i in range(profile.slices)
    ]
    models = [{"name": n, "base_path": str(work / "models" / n)} for n in names]
    config = write_config(work / "seed.yaml", devices, models, profile.headroom_fraction)
    at_default = write_config(work / "seed-default-headroom.yaml", devices, models)
    env = serve_env(work)
    plan = plan_json(config, env)
    (raw / "seed_plan.json").write_text(json.dumps(plan, indent=1))
    planned = {d["name"]: sorted(m["model"] for m in d["models"]) for d in plan.get("devices", [])}
    checks["plan_feasible"] = bool(plan.get("feasible"))
    checks["plan_3_per_device"] = sorted(len(v) for v in planned.values()) == [3] * profile.slices
    default_plan = plan_json(at_default, env)
    figures["plan_headroom_fraction"] = profile.headroom_fraction
    figures["default_headroom_plan_feasible"] = bool(default_plan.get("feasible"))
    checks["plan_feasible_at_default_headroom"] = figures["default_headroom_plan_feasible"]
    figures["default_headroom_plan_explanation"] = default_plan.get("explanation", "")
    figures["estimate_bytes_per_model"] = _estimates(plan)
    save()

    # 3.-4. serve
    expected = {n: load_expected(work / "expected" / f"{n}.npz") for n in names}
    try:
        with Served(config, work, raw / "seed_serve.log", env, profile.serve_timeout_s) as served:
            _served_checks(served, profile, names, planned, expected, result)
            save()
            _kill_one(served, profile, names, expected, result)
            save()
            figures["server_exit_code"] = served.stop()
    except (ServeFailed, OSError, KeyError, ValueError) as exc:
        result["errors"].append(f"serve: {type(exc).__name__}: {exc}")
    save()

    # 5. the slowest device's own loads, alone
    slowest = figures.get("slowest_device")
    if slowest in planned:
        dirs = [str(work / "models" / n / "1") for n in planned[slowest]]
        try:
            alone = _solo_loads(dirs, profile, raw)
            figures["slowest_device_alone_load_s"] = alone
            figures["slowest_device_alone_total_s"] = round(sum(alone), 3)
            wall = figures.get("cold_start_all_available_s")
            if wall:
                figures["cold_start_over_alone_sequential"] = round(wall / sum(alone), 3)
        except (subprocess.SubprocessError, ValueError, OSError) as exc:
            result["errors"].append(f"solo loads: {type(exc).__name__}: {exc}")
    return result


def _jobs(names: list[str], work: Path, shape: MlpShape) -> list[BuildJob]:
    """One job per model; hard links where the disk cannot hold every artifact (recorded)."""
    (work / "expected").mkdir(parents=True, exist_ok=True)
    room = shutil.disk_usage(work).free - 2 * shape.weight_bytes  # keep some for everything else
    distinct = max(1, min(len(names), room // (shape.weight_bytes + 2**20)))
    jobs = []
    for i, name in enumerate(names):
        source = names[i % distinct]
        link = "" if i < distinct else str(work / "models" / source / "1" / "model.pt2")
        jobs.append(
            BuildJob(
                name,
                str(work / "models" / name / "1"),
                seed=1000 + i,
                expected=str(work / "expected" / f"{name}.npz"),
                link_to=link,
            )
        )
    return jobs


def _estimates(plan: dict[str, Any]) -> dict[str, int]:
    return {m["model"]: m["bytes"] for d in plan.get("devices", []) for m in d["models"]}


def _served_checks(
    served: Served,
    profile: Any,
    names: list[str],
    planned: dict[str, list[str]],
    expected: dict[str, tuple[np.ndarray, np.ndarray]],
    result: dict[str, Any],
) -> None:
    checks, figures = result["checks"], result["figures"]
    figures["cold_start_listening_s"] = round(served.listening_s or 0.0, 3)
    wall = served.wait_available(names, profile.serve_timeout_s)
    figures["cold_start_all_available_s"] = round(wall, 3)
    checks["all_available"] = True
    status = served.status()
    held = {d["name"]: sorted(m.split(":")[0] for m in d["models"]) for d in status["devices"]}
    figures["served_layout"] = held
    checks["served_as_planned"] = held == planned
    checks["served_3_per_device"] = sorted(len(v) for v in held.values()) == [3] * profile.slices
    checks["one_worker_per_device"] = len({d["pid"] for d in status["devices"]}) == profile.slices

    # Each worker's own view: where its weights are, what it allocated, how long each load took.
    workers: dict[str, Any] = {}
    placed_ok = True
    load_sums: dict[str, float] = {}
    for device in held:
        report = served.report(device)
        placed = {m["model"]: m["placed_on"] for m in report["models"]}
        placed_ok &= sorted(placed) == held[device]
        placed_ok &= all(p == profile.placed_on for p in placed.values())
        load_sums[device] = round(sum(m.get("load_seconds", 0.0) for m in report["models"]), 3)
        workers[device] = {
            "pid": report["pid"],
            "cuda_visible_devices": report.get("cuda_visible_devices"),
            "cuda_device_name": report.get("cuda_device_name"),
            "cuda_allocated_bytes": report.get("cuda_allocated_bytes"),
            "rss_bytes": report["rss_bytes"],
            "models": {
                m["model"]: {
                    "placed_on": m["placed_on"],
                    "measured_bytes": m["measured_bytes"],
                    "load_seconds": m.get("load_seconds"),
                }
                for m in report["models"]
            },
        }
    figures["workers"] = workers
    checks["weights_on_their_device"] = placed_ok
    if profile.device_kind == "cuda":
        # torch.cuda.memory_allocated in each worker covers its 3 models' weights.
        need = 3 * MlpShape.of_bytes(profile.model_bytes).weight_bytes
        checks["allocated_holds_3_models"] = all(
            (w["cuda_allocated_bytes"] or 0) >= need for w in workers.values()
        )
    figures["device_load_sum_s"] = load_sums
    slowest = max(load_sums, key=lambda d: load_sums[d])
    figures["slowest_device"] = slowest
    figures["cold_start_over_slowest_device_loads"] = round(wall / max(load_sums[slowest], 1e-9), 3)

    # Estimates against measurements (the estimate is a promised upper bound).
    footprints = {}
    for m in status["models"]:
        measured = max((b or 0) for b in m["measured_bytes"].values()) if m["measured_bytes"] else 0
        estimated = m["estimated_bytes"] or 0
        footprints[m["model"]] = {
            "estimated_bytes": estimated,
            "measured_bytes": measured,
            "estimate_over_measured": round(estimated / measured, 3) if measured else None,
        }
    figures["footprints"] = footprints
    ratios = [
        f["estimate_over_measured"] for f in footprints.values() if f["estimate_over_measured"]
    ]
    figures["estimate_over_measured_min"] = min(ratios) if ratios else None
    figures["estimate_over_measured_max"] = max(ratios) if ratios else None
    checks["estimates_bound_measured"] = bool(ratios) and min(ratios) >= 1.0

    # Every answer against the model computed in process.
    diffs = {}
    equal = True
    for name in names:
        x, want = expected[name]
        got = served.infer(name, x)
        diffs[name] = float(np.max(np.abs(got - want)))
        equal &= bool(np.allclose(got, want, rtol=ANSWER_RTOL, atol=ANSWER_ATOL))
    figures["answer_max_abs_diff"] = diffs
    checks["answers_equal"] = equal


def _kill_one(
    served: Served,
    profile: Any,
    names: list[str],
    expected: dict[str, tuple[np.ndarray, np.ndarray]],
    result: dict[str, Any],
) -> None:
    """SIGKILL the first device's worker; its neighbours' models must answer right throughout."""
    checks, figures = result["checks"], result["figures"]
    status = served.status()
    victim = status["devices"][0]
    victims = sorted(m.split(":")[0] for m in victim["models"])
    others = [n for n in names if n not in victims]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    answered = wrong = failed = 0
    rounds = 0
    # A bounded number of rounds over the other devices' models, right after the kill.
    while rounds < profile.kill_rounds and time.monotonic() - killed_at < profile.kill_window_s:
        rounds += 1
        for name in others:
            x, want = expected[name]
            try:
                got = served.infer(name, x, timeout_s=30)
            except ServeFailed as exc:
                failed += 1
                result["errors"].append(f"after the kill: {exc}")
                continue
            answered += 1
            wrong += not np.allclose(got, want, rtol=ANSWER_RTOL, atol=ANSWER_ATOL)
    during = served.states()
    figures["kill"] = {
        "device": victim["name"],
        "pid": victim["pid"],
        "its_models": victims,
        "rounds_over_neighbours": rounds,
        "neighbour_answers": answered,
        "neighbour_wrong": wrong,
        "neighbour_failed": failed,
        "seconds_of_rounds": round(time.monotonic() - killed_at, 3),
        "its_models_state_after_rounds": {n: during.get(n) for n in victims},
    }
    checks["neighbours_answer_after_kill"] = (
        len(others) == len(names) - 3 and answered == rounds * len(others) and not wrong
    )
    try:
        # "Back" is a new worker holding them: with few neighbours the rounds above can end
        # before the server has even seen the death, its models still AVAILABLE on the old pid.
        _wait_replaced(served, victim["name"], victim["pid"], profile.restart_timeout_s)
        back = served.wait_available(victims, profile.restart_timeout_s)
        figures["kill"]["back_available_s"] = round(back - (killed_at - served.started), 3)
        x, want = expected[victims[0]]
        checks["killed_device_back_and_right"] = bool(
            np.allclose(served.infer(victims[0], x), want, rtol=ANSWER_RTOL, atol=ANSWER_ATOL)
        )
    except ServeFailed as exc:
        checks["killed_device_back_and_right"] = False
        result["errors"].append(f"restart: {exc}")


def _wait_replaced(served: Served, device: str, pid: int, timeout_s: float) -> None:
    """Return once ``device``'s worker is a process other than ``pid``; ServeFailed after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = {d["name"]: d.get("pid") for d in served.status()["devices"]}.get(device)
        if now not in (None, pid):
            return
        time.sleep(0.1)
    raise ServeFailed(f"device {device}: worker pid {pid} not replaced within {timeout_s:.0f} s")


def _solo_loads(dirs: list[str], profile: Any, raw: Path) -> list[float]:
    """Seconds of each load, one after another, in a fresh process pinned like a worker."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = "0" if profile.device_kind == "cuda" else ""
    target = "cuda:0" if profile.device_kind == "cuda" else "cpu"
    done = subprocess.run(
        [sys.executable, __file__, target, *dirs],
        env=env,
        capture_output=True,
        text=True,
        timeout=profile.solo_timeout_s,
    )
    (raw / "seed_solo_loads.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ValueError(f"exit {done.returncode}: {done.stderr[-500:]}")
    seconds: list[float] = json.loads(done.stdout.splitlines()[-1])
    return seconds


def solo_main(target: str, dirs: list[str]) -> None:
    """Load each of ``dirs`` through modelyard's backend, holding them all, as one worker does;
    prints the seconds of each load as a JSON list (the framework's one-time costs untimed)."""
    from modelyard.backends import get_backend
    from modelyard.config.schema import Platform

    backend = get_backend(Platform.TORCH_EXPORT)
    backend.prepare(target)
    held, seconds = [], []
    for d in dirs:
        began = time.monotonic()
        held.append(backend.load(Path(d), target, None))
        seconds.append(round(time.monotonic() - began, 3))
    for model in held:
        model.unload()
    print(json.dumps(seconds))


if __name__ == "__main__":
    solo_main(sys.argv[1], sys.argv[2:])
