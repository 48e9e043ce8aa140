"""A load that fails part way releases what it had loaded: nothing stays on a device unused."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from modelyard.config import parse_config
from modelyard.config.schema import DeviceKind
from modelyard.errors import ResourceExhausted
from modelyard.ids import VersionKey
from modelyard.lifecycle.controller import Controller, LoadRequest
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.lifecycle.servable import Servable
from modelyard.lifecycle.states import ModelState
from modelyard.planner import Device, ModelDemand, place
from modelyard.planner.plan import FootprintSource
from modelyard.tensors import DataType, Signature, TensorSpec

MIB = 1024 * 1024
SIG = Signature((TensorSpec("x", DataType.FP32, (-1,)),), (TensorSpec("y", DataType.FP32, (-1,)),))


class Held:
    signature = SIG
    signatures = {"serving_default": SIG}

    def __init__(self, device: str) -> None:
        self.device = device
        self.closed = False

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        return {"y": inputs["x"]}

    async def close(self) -> None:
        self.closed = True


class FullSecondDevice:
    """Loads on d0; d1 is out of memory."""

    def __init__(self) -> None:
        self.loaded: list[Held] = []

    async def load(self, request: LoadRequest) -> Servable:
        if request.device_name == "d1":
            raise ResourceExhausted("d1 is out of memory")
        held = Held(request.device_name)
        self.loaded.append(held)
        return held


def _controller(
    tmp_path: Path, loader: FullSecondDevice, **kwargs: object
) -> tuple[Controller, ModelRegistry]:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"")  # found by name; never opened here
    config = parse_config("models: [{name: m, base_path: m, replicas: 2}]\n", base_dir=tmp_path)
    registry = ModelRegistry()
    # Two devices with room for one replica each: the plan puts m:1 on d0 and on d1.
    devices = [Device(f"d{i}", DeviceKind.CPU, i, 100 * MIB, 100 * MIB) for i in range(2)]
    demand = ModelDemand(VersionKey("m", 1), 60 * MIB, None, 2, FootprintSource.CONFIG)
    plan = place([demand], devices, headroom_fraction=0.0)
    assert plan.placement() == {VersionKey("m", 1): ("d0", "d1")}
    return Controller(config, registry, loader, plan=plan, **kwargs), registry  # type: ignore[arg-type]


def test_second_replica_failing_releases_the_first(tmp_path: Path) -> None:
    loader = FullSecondDevice()
    controller, registry = _controller(tmp_path, loader)
    asyncio.run(controller.start())
    entry = registry.resolve("m", 1)
    assert entry.state is ModelState.FAILED
    assert "d1 is out of memory" in entry.error
    assert [h.device for h in loader.loaded] == ["d0"]
    assert loader.loaded[0].closed


def test_wrapper_failing_releases_the_replica(tmp_path: Path) -> None:
    loader = FullSecondDevice()

    def refuse(servable: Servable, model: object) -> Servable:
        raise ValueError("batching needs a variable first dimension")

    controller, registry = _controller(tmp_path, loader, wrap=refuse)
    asyncio.run(controller.start())
    entry = registry.resolve("m", 1)
    assert entry.state is ModelState.FAILED
    assert "variable first dimension" in entry.error
    assert all(h.closed for h in loader.loaded)
    assert loader.loaded
