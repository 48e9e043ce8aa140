"""CP-SAT re-plans in a process that imported the ML frameworks first.

TensorFlow loads its framework library with RTLD_GLOBAL; an OR-Tools imported after it bound its
protobuf calls to TensorFlow's copy and the whole process died with SIGSEGV inside the solve
(a management load re-planning in the server). The planner now solves in a child process when
that order is found (``modelyard.planner.solver``); this test runs the crashing order for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelyard.planner import solver

# find_spec, not importorskip: this process must not import tensorflow itself (its solves would
# all go to child processes).
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ortools") is None or importlib.util.find_spec("tensorflow") is None,
    reason="needs ortools and tensorflow-cpu (make setup installs both)",
)

SRC = Path(__file__).resolve().parents[2] / "src"

PLAN = textwrap.dedent(
    """
    import json, sys
    for name in sys.argv[1:]:
        __import__(name)
    from modelyard.config.schema import DeviceKind
    from modelyard.ids import VersionKey
    from modelyard.planner import Device, ModelDemand, PlacerOptions, SolverUse, place
    from modelyard.planner import solver

    GiB = 2**30
    devices = [Device(f"sim{i}", DeviceKind.CPU, None, 10 * GiB, 10 * GiB) for i in range(2)]
    # Largest-first greedy puts 5+4 and 5+3 and has no room for the last 3 GiB; only 5+5 and
    # 4+3+3 place everything, which the solver finds (the exact search is switched off).
    demands = [ModelDemand(VersionKey(f"m{i}", 1), g * GiB) for i, g in enumerate([5, 5, 4, 3, 3])]
    options = PlacerOptions(solver=SolverUse.ALWAYS, exact_max_nodes=0)
    first = place(demands, devices, headroom_fraction=0.0, options=options)
    # Re-plan with the first plan as the current placement, as a management load does.
    again = place(demands, devices, first.placement(), headroom_fraction=0.0, options=options)
    print(json.dumps({
        "in_process": solver.in_process_safe(),
        "strategy": first.strategy.value,
        "plans": [
            {str(k): list(v) for k, v in plan.placement().items()} for plan in (first, again)
        ],
    }))
    """
)


def _plan_after(*modules: str) -> dict[str, object]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", PLAN, *modules],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_the_solver_re_plans_after_torch_onnx_and_tensorflow_were_imported() -> None:
    after = _plan_after("torch", "onnx", "onnxruntime", "tensorflow")
    assert after["in_process"] is False  # OR-Tools kept out of the process that has TensorFlow
    assert after["strategy"] == "solver"
    plans = after["plans"]
    assert isinstance(plans, list)
    first, again = plans
    assert len(first) == 5  # every model placed: 5+5 on one device, 4+3+3 on the other
    assert again == first  # re-planning moved nothing
    loads: dict[str, int] = {}
    for key, (device,) in first.items():
        loads[device] = loads.get(device, 0) + {"m0": 5, "m1": 5, "m2": 4}.get(key[:2], 3)
    assert sorted(loads.values()) == [10, 10]


def test_the_child_process_answers_as_the_solver_in_process() -> None:
    spec: solver.Spec = {
        "sizes": [5, 5, 4, 3, 3, 2],
        "replicas": [1, 1, 1, 1, 1, 2],
        "allowed": [[0, 1, 2]] * 6,
        "current_of": [[0], [], [], [1], [], []],
        "budgets": [10, 8, 6],
        "caps": [10, 8, 6],
        "hint": None,
        "time_limit_s": 5.0,
        "det_time": 0.5,
    }
    child = solver._solve_in_child(spec)
    assert child is not None
    assert sum(len(d) for d in child) == 7  # all 22 units fit in 24
    if solver.in_process_safe():
        assert solver.solve_spec(spec) == child
