"""The seed scenario from the issue, through the same path `modelyard plan` takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import load_config
from modelyard.config.loader import parse_config
from modelyard.config.schema import ServerConfig
from modelyard.devices.inventory import build_inventory
from modelyard.devices.probe import GpuInfo, HostMemory
from modelyard.errors import ResourceExhausted
from modelyard.planner.demands import plan_for_config
from modelyard.planner.plan import Plan

GiB = 2**30
SEED = Path(__file__).parents[3] / "examples" / "seed-12x4GiB.yaml"


def no_gpus() -> tuple[GpuInfo, ...]:
    return ()


def small_host() -> HostMemory:
    return HostMemory(total_bytes=8 * GiB, available_bytes=4 * GiB)


def plan_of(config: ServerConfig) -> Plan:
    return plan_for_config(config, build_inventory(config.devices, gpus=no_gpus, host=small_host))


def config_text(models: list[str], devices: int = 4) -> str:
    lines = ["devices:"]
    lines += [
        f"  - {{name: gpu{i}, kind: cuda, index: {i}, memory: 15GiB}}" for i in range(devices)
    ]
    lines += ["models:"] + [f"  - {m}" for m in models]
    return "\n".join(lines)


def test_seed_example_puts_three_4gib_models_on_each_15gib_gpu() -> None:
    plan = plan_of(load_config(SEED))
    assert plan.feasible
    assert [len(u.models) for u in plan.devices] == [3, 3, 3, 3]
    assert all(u.used_bytes == 12 * GiB for u in plan.devices)
    assert {k.model for u in plan.devices for k in u.models} == {f"m{i}" for i in range(1, 13)}


def test_seed_pinned_to_one_gpu_is_refused_with_names_and_numbers() -> None:
    plan = plan_of(load_config(SEED.with_name("seed-12x4GiB-pinned.yaml")))
    assert not plan.feasible
    # three fit on gpu0 (14.25 GiB after 5% headroom), nine do not
    assert sum(len(a.devices) for a in plan.assignments) == 3
    assert len(plan.short) == 9
    text = plan.explanation
    assert "gpu0" in text
    assert "36.0 GiB" in text  # what the nine left out need together
    assert "2.2 GiB free" in text  # what is left on gpu0
    assert "pin" in text  # what would make it fit


def test_thirteen_4gib_plus_one_15gib_is_refused_naming_the_big_model() -> None:
    plan = plan_of(load_config(SEED.with_name("seed-13x4GiB-plus-15GiB.yaml")))
    assert not plan.feasible
    assert "big:0 needs 15.0 GiB" in plan.explanation
    assert "holds at most 14.2 GiB" in plan.explanation
    assert "10.0 GiB short" in plan.explanation  # 67 GiB asked, 57 GiB plannable
    with pytest.raises(ResourceExhausted, match=r"big:0 needs 15\.0 GiB"):
        plan.raise_if_infeasible()


def test_pins_and_replicas_are_honoured(tmp_path: Path) -> None:
    models = [f"{{name: m{i}, base_path: ./m{i}, memory: 4GiB}}" for i in range(1, 7)]
    models += [
        "{name: pinned, base_path: ./p, memory: 4GiB, devices: [gpu3]}",
        "{name: twice, base_path: ./t, memory: 4GiB, replicas: 2, devices: [gpu1, gpu2, gpu3]}",
        "{name: thrice, base_path: ./r, memory: 2GiB, replicas: 3}",
    ]
    plan = plan_of(parse_config(config_text(models), base_dir=tmp_path))
    assert plan.feasible
    placement = {k.model: v for k, v in plan.placement().items()}
    assert placement["pinned"] == ("gpu3",)
    assert len(placement["twice"]) == 2
    assert set(placement["twice"]) <= {"gpu1", "gpu2", "gpu3"}
    assert len(set(placement["thrice"])) == 3
