"""The GPU check (issue 19): everything modelyard's CUDA path should show, in one run.

    bench/gpu_check.sh                          # on the GPU machine (installs carried wheels)
    python bench/gpu_check.py --out DIR         # the same, wheels already installed
    python bench/gpu_check.py --rehearse --out DIR   # on a CPU: same code path, sizes shrunk

Steps, each in its own process with its own time box, each recorded whatever the earlier ones
did (a step that fails or runs out of time is written down as such, and the next one runs):

- ``env``: date, machine, GPU, driver, torch and CUDA versions, the packages in use, pinned
  host-to-device copy bandwidth (for the paging goal, once paging exists);
- ``cuda_tests``: ``pytest -m cuda`` over every test file that has the marker;
- ``seed``: the seed scenario (``gpu_check_seed``): 12 models of 4 GiB on 4 slices of 15 GiB;
- ``batching``: batching on vs off on the device (``gpu_check_batching``).

What comes back (at most 8 files, the device tool's limit): ``summary.json`` (every step's
figures and checks), ``summary.md`` (the same as tables), ``raw.tar.gz`` (every log and raw
JSON) and ``console.log`` (this driver's own output). Both summaries are rewritten after each
step, so a run cut short still returns what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

STEPS = ("env", "cuda_tests", "seed", "batching")
GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class Profile:
    """Sizes and time boxes of one kind of run."""

    name: str
    device_kind: str  # the kind of the planned devices: "cuda" or "cpu"
    placed_on: str  # where each worker must report its weights
    reference_device: str  # where models are built and their answers computed in process
    slice_memory: str
    model_bytes: int
    build_processes: int
    medium_layers: tuple[int, ...]
    bench_seconds: float
    floor_seconds: float
    timeouts: dict[str, float]
    slices: int = 4
    models: int = 12
    # None: the planner's default (5 %: 14.25 GiB of a 15 GiB slice), where 3 estimated torch
    # models of 4 GiB (weights + 32 MiB + 3 % + 10 %: 13.65 GiB) fit. Before the first GPU run
    # the estimate was 1.2 x weights (14.5 GiB for 3) and the check planned at 3 %.
    headroom_fraction: float | None = None
    serve_timeout_s: float = 240.0
    restart_timeout_s: float = 90.0
    solo_timeout_s: float = 120.0
    kill_rounds: int = 3
    kill_window_s: float = 10.0
    deadline_s: float = 560.0  # the whole run, inside the device tool's 600 s per command


GPU = Profile(
    name="gpu",
    device_kind="cuda",
    placed_on="cuda:0",
    reference_device="cuda:0",
    slice_memory="15GiB",
    model_bytes=4 * GiB,
    build_processes=4,
    medium_layers=(1024, 4096, 4096, 1024),
    bench_seconds=3.0,
    floor_seconds=1.0,
    timeouts={"env": 45, "cuda_tests": 120, "seed": 300, "batching": 110},
)
REHEARSAL = Profile(
    name="rehearsal (CPU)",
    device_kind="cpu",
    placed_on="cpu",
    reference_device="cpu",
    slice_memory="128MiB",  # 3 estimated 4 MiB models (36.8 MiB each) fit, 4 do not
    model_bytes=4 * MiB,
    build_processes=1,
    medium_layers=(256, 1024, 1024, 256),
    bench_seconds=0.5,
    floor_seconds=0.2,
    # Generous: on a loaded 2-core box four workers importing torch take a minute to start.
    timeouts={"env": 60, "cuda_tests": 120, "seed": 360, "batching": 150},
    serve_timeout_s=240.0,
    restart_timeout_s=90.0,
    solo_timeout_s=90.0,
    kill_window_s=5.0,
    deadline_s=720.0,
)


@dataclass
class StepOutcome:
    name: str
    status: str = "not run"  # ok | failed | timed out | error | skipped
    seconds: float = 0.0
    detail: str = ""
    result: dict[str, Any] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    parser.add_argument("--work", type=Path, help="where models are written (default: a folder "
                        "with room for them under /tmp or build/)")  # fmt: skip
    parser.add_argument("--rehearse", action="store_true", help="CPU devices, small sizes")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    parser.add_argument("--deadline-s", type=float, help="stop starting steps after this "
                        "many seconds (default: the profile's)")  # fmt: skip
    parser.add_argument("--keep-work", action="store_true", help="keep the models afterwards")
    parser.add_argument("--slices", type=int, help="the seed scenario on this many slices, 3 "
                        "models each (default: 4, 12 models; the suite rehearses 2)")  # fmt: skip
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step here
    args = parser.parse_args(argv)
    profile = REHEARSAL if args.rehearse else GPU
    if args.deadline_s is not None:
        profile = dataclasses.replace(profile, deadline_s=min(profile.deadline_s, args.deadline_s))
    if args.slices is not None:
        profile = dataclasses.replace(profile, slices=args.slices, models=3 * args.slices)
    if args.step:
        return _run_step_here(args.step, profile, args.work, args.out)
    return _drive(profile, args)


_running_step: list[int] = []  # the process group of the step running now, if any


def _on_sigterm(signum: int, frame: object) -> None:
    """Stopped from outside (a test's time limit, ``timeout``): the running step's group goes
    too, its server and that server's workers with it, rather than running on orphaned."""
    for group in _running_step:
        _kill_leftovers(group)
    raise SystemExit(128 + signum)


def _drive(profile: Profile, args: argparse.Namespace) -> int:
    began = time.monotonic()
    signal.signal(signal.SIGTERM, _on_sigterm)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or _work_dir(profile)
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw"
    raw.mkdir(exist_ok=True)
    summary: dict[str, Any] = {
        "profile": asdict(profile),
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "work_dir": str(work),
        "steps": {},
    }
    wanted = [s for s in args.steps.split(",") if s]
    for name in STEPS:
        outcome = StepOutcome(name)
        left = profile.deadline_s - (time.monotonic() - began)
        if name not in wanted:
            outcome.status = "skipped"
        elif left < 15:
            outcome.status = "skipped"
            outcome.detail = f"only {left:.0f} s of the run's {profile.deadline_s:.0f} s left"
        else:
            _say(f"step {name} (up to {min(profile.timeouts[name], left):.0f} s)")
            _run_step(outcome, profile, work, raw, min(profile.timeouts[name], left - 5))
            _say(f"step {name}: {outcome.status} in {outcome.seconds:.1f} s {outcome.detail}")
        summary["steps"][name] = asdict(outcome)
        summary["elapsed_s"] = round(time.monotonic() - began, 1)
        _write_outputs(summary, out, raw)
    if args.work is None and not args.keep_work and profile.device_kind == "cpu":
        # A rehearsal's models; what was measured is in ``out``. (The GPU machine is handed
        # back bare, and deleting 48 GiB there would only spend device time.)
        shutil.rmtree(work, ignore_errors=True)
    from gpu_check_report import markdown

    print(markdown(summary), flush=True)
    failed = [n for n, s in summary["steps"].items() if s["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


def _work_dir(profile: Profile) -> Path:
    """A folder on the file system with the most room (48 GiB of models on the GPU)."""
    import tempfile

    if profile.device_kind == "cpu":
        return Path(tempfile.mkdtemp(prefix="modelyard-gpucheck-"))
    candidates = [Path("/tmp"), ROOT / "build", Path.home()]
    best = max((c for c in candidates if c.is_dir()), key=lambda c: shutil.disk_usage(c).free)
    return Path(tempfile.mkdtemp(prefix="modelyard-gpucheck-", dir=best))


def _run_step(outcome: StepOutcome, profile: Profile, work: Path, raw: Path, limit: float) -> None:
    """Run one step in its own process group; a step past ``limit`` is killed, group and all
    (its server and that server's workers too)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", outcome.name]
    command += ["--work", str(work), "--out", str(raw)]
    if profile.device_kind == "cpu":
        command.append("--rehearse")
    command += ["--slices", str(profile.slices)]
    started = time.monotonic()
    with (raw / f"{outcome.name}.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _running_step.append(process.pid)
        try:
            code = process.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            code = None
        finally:
            _running_step.remove(process.pid)
    outcome.seconds = round(time.monotonic() - started, 2)
    _kill_leftovers(process.pid)
    result_file = raw / f"{outcome.name}.json"
    if result_file.exists():
        outcome.result = json.loads(result_file.read_text())
    if code is None:
        outcome.status, outcome.detail = "timed out", f"killed after {limit:.0f} s"
    elif code != 0:
        outcome.status = "error"
        outcome.detail = f"exit {code}: " + _tail(raw / f"{outcome.name}.log")
    elif outcome.result.get("errors") or not all(outcome.result.get("checks", {}).values()):
        outcome.status = "failed"
        failed = [k for k, v in outcome.result.get("checks", {}).items() if not v]
        outcome.detail = "; ".join([*(f"check {k}" for k in failed), *outcome.result["errors"]])
    else:
        outcome.status = "ok"


def _kill_leftovers(group: int) -> None:
    """Whatever a step started in its process group and left running (a server, its workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _run_step_here(name: str, profile: Profile, work: Path, raw: Path) -> int:
    """Inside the step's process: run it and write ``raw/<name>.json``."""
    import traceback

    steps = {"env": _env_step, "cuda_tests": _cuda_tests_step}
    result: dict[str, Any]
    try:
        if name == "seed":
            import gpu_check_seed

            result = gpu_check_seed.run(profile, work, raw)
        elif name == "batching":
            import gpu_check_batching

            result = gpu_check_batching.run(profile, work, raw)
        else:
            result = steps[name](profile, work, raw)
    except Exception as exc:
        traceback.print_exc()
        result = {"checks": {}, "figures": {}, "errors": [f"{type(exc).__name__}: {exc}"]}
    (raw / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def _env_step(profile: Profile, work: Path, raw: Path) -> dict[str, Any]:
    import importlib.metadata
    import platform

    import psutil

    figures: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "memory_total_gib": round(psutil.virtual_memory().total / GiB, 1),
        "work_dir_free_gib": round(shutil.disk_usage(work).free / GiB, 1),
        "commit": _git("rev-parse", "HEAD"),
    }
    versions = {}
    for package in ("modelyard", "torch", "numpy", "onnxruntime", "grpcio", "protobuf",
                    "pydantic", "starlette", "uvicorn", "httpx", "pytest"):  # fmt: skip
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    figures["versions"] = versions
    import modelyard

    figures["modelyard_from"] = str(Path(modelyard.__file__).parent)
    smi = shutil.which("nvidia-smi")
    if smi:
        full = subprocess.run([smi], capture_output=True, text=True, timeout=20)
        (raw / "nvidia-smi.txt").write_text(full.stdout + full.stderr)
        query = "name,driver_version,memory.total,memory.used,memory.free"
        csv = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        figures["nvidia_smi"] = csv.stdout.strip()
    import torch

    figures["torch"] = torch.__version__
    figures["torch_cuda"] = torch.version.cuda
    figures["cuda_available"] = torch.cuda.is_available()
    checks = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures["gpu"] = props.name
        figures["gpu_memory_gib"] = round(props.total_memory / GiB, 1)
        figures["gpu_capability"] = f"{props.major}.{props.minor}"
        figures["pinned_h2d_gb_per_s"] = _pinned_h2d(torch)
    if profile.device_kind == "cuda":
        checks["cuda_available"] = bool(torch.cuda.is_available())
    return {"checks": checks, "figures": figures, "errors": []}


def _pinned_h2d(torch: Any, size: int = 2 * GiB) -> float:
    """Pinned host-to-device copy bandwidth (GB/s, best of 5): the ceiling a page-in from host
    memory is measured against."""
    host = torch.empty(size, dtype=torch.uint8).pin_memory()
    device = torch.empty(size, dtype=torch.uint8, device="cuda:0")
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        began = time.perf_counter()
        device.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return round(size / best / 1e9, 2)


def _cuda_tests_step(profile: Profile, work: Path, raw: Path) -> dict[str, Any]:
    """``pytest -m cuda`` over the test files that carry the marker (found, not listed)."""
    import xml.etree.ElementTree as ET

    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").rglob("test_*.py")
        if "mark.cuda" in p.read_text(errors="replace")
    )
    junit = raw / "cuda_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, f"--junitxml={junit}", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=profile.timeouts["cuda_tests"] - 10,
    )
    (raw / "cuda_tests_pytest.log").write_text(done.stdout + done.stderr)
    figures: dict[str, Any] = {"files": files, "exit_code": done.returncode}
    errors: list[str] = []
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        for key in ("tests", "failures", "errors", "skipped"):
            figures[key] = int(suite.get(key, 0))
        skipped = figures["skipped_reasons"] = {}
        for case in suite.iter("testcase"):
            for bad in (*case.findall("failure"), *case.findall("error")):
                errors.append(f"{case.get('name')}: {(bad.get('message') or '')[:300]}")
            for skip in case.findall("skipped"):
                skipped[str(case.get("name"))] = (skip.get("message") or "")[:200]
    else:
        errors.append(f"pytest wrote no report (exit {done.returncode})")
    ran = figures.get("tests", 0) - figures.get("skipped", 0)
    checks = {"cuda_tests_pass": done.returncode in (0, 5) and not errors}
    if profile.device_kind == "cuda":
        checks["cuda_tests_ran"] = ran > 0  # on a GPU, none may be skipped for want of one
    figures["ran"] = ran
    return {"checks": checks, "figures": figures, "errors": errors}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GPU_CHECK_COMMIT")
    return done.stdout.strip() or os.environ.get("GPU_CHECK_COMMIT")


def _write_outputs(summary: dict[str, Any], out: Path, raw: Path) -> None:
    from gpu_check_report import markdown

    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(markdown(summary))
    with tarfile.open(out / "raw.tar.gz", "w:gz") as tar:
        for path in sorted(raw.iterdir()):
            if path.is_file() and path.stat().st_size < 8 * MiB:
                tar.add(path, arcname=f"raw/{path.name}")


def _tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip().replace("\n", " | ")
    except OSError:
        return ""


def _say(text: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {text}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
