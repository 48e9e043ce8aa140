"""A version's failure is that version's: the controller with a plan, a fake loader and real
files. A corrupt version is FAILED with the reason and never stops another model's converge
or a management change; it is retried when its files change; new versions wait to settle."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from modelyard.config import parse_config
from modelyard.devices.inventory import build_inventory
from modelyard.lifecycle.controller import Controller, LoadRequest
from modelyard.lifecycle.placement import demand_of
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.lifecycle.servable import Servable
from modelyard.lifecycle.states import ModelState
from modelyard.planner.demands import plan_for_config
from modelyard.planner.footprints import FootprintCache
from modelyard.testing.models import write_corrupt, write_onnx_linear

CONFIG = """
devices: [{name: sim0, kind: cpu, memory: 1GiB}]
models:
  - {name: m, base_path: m, version_policy: {latest: 1}}
  - {name: other, base_path: other}
"""


class Held:
    def __init__(self, request: LoadRequest) -> None:
        self.request = request

    @property
    def signature(self) -> object:
        return None

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {}

    async def close(self) -> None:
        pass


class Loads:
    """Loads anything it is given (the artifact was checked by sizing)."""

    async def load(self, request: LoadRequest) -> Servable:
        return Held(request)  # type: ignore[return-value]


def _setup(tmp_path: Path, settle_s: float = 0.0) -> tuple[Controller, ModelRegistry, Path]:
    write_onnx_linear(tmp_path / "m" / "1", seed=1)
    write_onnx_linear(tmp_path / "other" / "1", seed=2)
    config = parse_config(CONFIG, base_dir=tmp_path)
    cache = FootprintCache(tmp_path / "cache.json")
    plan = plan_for_config(config, build_inventory(config.devices), cache=cache)
    registry = ModelRegistry()
    controller = Controller(
        config, registry, Loads(), plan=plan, demand=demand_of(cache), settle_s=settle_s
    )
    return controller, registry, tmp_path / "m"


def _state(registry: ModelRegistry, model: str, version: int) -> ModelState | None:
    found = [e for e in registry.versions(model) if e.key.version == version]
    return found[0].state if found else None


def test_a_corrupt_new_version_fails_alone_and_changes_still_apply(tmp_path: Path) -> None:
    controller, registry, base = _setup(tmp_path)

    async def scenario() -> None:
        await controller.start()
        write_corrupt(base / "2")  # random bytes as model.onnx
        await controller.converge()
        entry = registry.resolve("m", 2)
        assert entry.state is ModelState.FAILED
        assert "model.onnx is not a valid ONNX model" in entry.error
        assert _state(registry, "m", 1) is ModelState.AVAILABLE  # never replaced by a failure
        # A management change converges every model: it must not trip over m:2.
        full = controller.config
        await controller.reconfigure(full.model_copy(update={"models": full.models[:1]}))
        assert "other" not in registry.model_names()
        await controller.reconfigure(full)
        assert _state(registry, "other", 1) is ModelState.AVAILABLE
        await controller.stop()

    asyncio.run(scenario())


def test_a_failed_version_is_retried_when_its_files_change(tmp_path: Path) -> None:
    controller, registry, base = _setup(tmp_path)

    async def scenario() -> None:
        await controller.start()
        write_corrupt(base / "2")
        await controller.converge()
        assert _state(registry, "m", 2) is ModelState.FAILED
        await controller.converge()  # nothing changed: no retry, the same reason
        assert _state(registry, "m", 2) is ModelState.FAILED
        write_onnx_linear(base / "2", seed=3)  # the file replaced by a good one
        await controller.converge()
        assert _state(registry, "m", 2) is ModelState.AVAILABLE
        await controller.stop()

    asyncio.run(scenario())


def test_a_new_version_waits_until_its_files_settle(tmp_path: Path) -> None:
    controller, registry, base = _setup(tmp_path, settle_s=0.3)

    async def scenario() -> None:
        await controller.start()
        write_onnx_linear(base / "2", seed=3)
        await controller.converge()
        assert _state(registry, "m", 2) is None  # not loaded yet: its files just appeared
        assert _state(registry, "m", 1) is ModelState.AVAILABLE
        for _ in range(40):  # the controller looks again by itself after settle_s
            await asyncio.sleep(0.05)
            if _state(registry, "m", 2) is ModelState.AVAILABLE:
                break
        assert _state(registry, "m", 2) is ModelState.AVAILABLE
        await controller.stop()

    asyncio.run(scenario())


def test_start_up_marks_unreadable_versions_failed_with_their_reason(tmp_path: Path) -> None:
    write_onnx_linear(tmp_path / "m" / "1", seed=1)
    (tmp_path / "other" / "1" / "model.onnx").mkdir(parents=True)
    config = parse_config(CONFIG, base_dir=tmp_path)
    cache = FootprintCache(tmp_path / "cache.json")
    plan = plan_for_config(config, build_inventory(config.devices), cache=cache)
    assert plan.feasible
    assert [str(u.key) for u in plan.unreadable] == ["other:1"]
    registry = ModelRegistry()
    controller = Controller(config, registry, Loads(), plan=plan)

    async def scenario() -> None:
        await controller.start()
        assert registry.resolve("m", 1).state is ModelState.AVAILABLE
        failed = registry.resolve("other", 1)
        assert failed.state is ModelState.FAILED
        assert "model.onnx is a folder" in failed.error
        await controller.stop()

    asyncio.run(scenario())
