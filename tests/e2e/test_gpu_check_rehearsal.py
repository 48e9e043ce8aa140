"""The GPU check's CPU rehearsal (issue 19): its seed scenario, end to end, shrunk to a CPU.

``bench/gpu_check.py --rehearse --steps seed`` is the code a GPU run executes, with CPU devices
and small sizes: it builds torch.export MLPs of 4 MiB, 3 per CPU device of 128 MiB (3 fit on
each, 4 do not), plans them, starts ``modelyard serve`` as its own process, reads each worker's
own report, compares every answer with the model computed in process, SIGKILLs one worker and
asks the other devices' models, then waits for the killed device's models to come back. This
test reads the summary that run leaves, as the GPU run's reader will.

The suite rehearses on 2 devices (``--slices 2``: 6 models, the killed device's 3 neighbours);
the GPU run and ``--rehearse`` alone use 4 (12 models, 9 neighbours). Every step and check is
the same code either way; 2 devices start two fewer workers importing torch (the bulk of this
test's time on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


SLICES = 2


@pytest.mark.timeout(480)  # about 30-40 s on 2 idle cores; each worker imports torch
def test_rehearsal_serves_3_models_per_device_and_survives_a_killed_worker(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the run's models go with the test's folder
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--rehearse"]
    run = subprocess.Popen(
        [*command, "--steps", "seed", "--slices", str(SLICES), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        stdout, _ = run.communicate(timeout=420)
    finally:
        if run.poll() is None:  # SIGTERM: the check stops its server and workers too
            run.terminate()
            run.communicate(timeout=30)
    summary = json.loads((out / "summary.json").read_text())
    seed = summary["steps"]["seed"]
    assert seed["status"] == "ok", f"{seed['detail']}\n{stdout[-4000:]}"
    assert run.returncode == 0
    checks = seed["result"]["checks"]
    figures = seed["result"]["figures"]
    assert len(checks) >= 10
    assert [name for name, ok in checks.items() if not ok] == []

    # Every model AVAILABLE, 3 on each device, as planned.
    layout = figures["served_layout"]
    assert sorted(layout) == [f"slice{i}" for i in range(SLICES)]
    assert [len(models) for models in layout.values()] == [3] * SLICES
    served = sorted(m for models in layout.values() for m in models)
    assert served == [f"m{i:02d}" for i in range(3 * SLICES)]
    # Each worker says it holds its own 3 models, with their weights on its device.
    for device, worker in figures["workers"].items():
        assert sorted(worker["models"]) == layout[device]
        assert {m["placed_on"] for m in worker["models"].values()} == {"cpu"}
        assert all(m["load_seconds"] > 0 for m in worker["models"].values())
    # Every answer is the model's own, computed in process.
    assert len(figures["answer_max_abs_diff"]) == 3 * SLICES
    assert max(figures["answer_max_abs_diff"].values()) <= 1e-4
    # The estimate bounds what each load measured.
    for footprint in figures["footprints"].values():
        assert footprint["estimated_bytes"] >= footprint["measured_bytes"] > 0

    # One worker SIGKILLed: the models on the other devices answered, right, every round.
    kill = figures["kill"]
    assert sorted(kill["its_models"]) == layout[kill["device"]]
    assert kill["rounds_over_neighbours"] >= 1
    assert kill["neighbour_answers"] == 3 * (SLICES - 1) * kill["rounds_over_neighbours"]
    assert kill["neighbour_wrong"] == kill["neighbour_failed"] == 0
    assert kill["back_available_s"] > 0

    # The cold start is set against the slowest device's loads, in its worker and alone.
    assert figures["cold_start_all_available_s"] > 0
    assert len(figures["slowest_device_alone_load_s"]) == 3

    # What comes back from the GPU machine: few files (its limit is 8), the markdown readable.
    assert sorted(p.name for p in out.iterdir()) == ["raw.tar.gz", "summary.json", "summary.md"]
    assert "| slice0 |" in (out / "summary.md").read_text()
