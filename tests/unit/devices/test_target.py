"""Device targets: parsed once, typed, and what a worker pinned to one sees."""

from __future__ import annotations

import pytest

from modelyard.devices import Device, DeviceKind, DeviceTarget
from modelyard.errors import InvalidArgument

GiB = 2**30


@pytest.mark.parametrize(
    ("text", "kind", "index"),
    [("cpu", DeviceKind.CPU, 0), ("cuda", DeviceKind.CUDA, 0), ("cuda:3", DeviceKind.CUDA, 3)],
)
def test_a_target_parses_and_prints_back(text: str, kind: DeviceKind, index: int) -> None:
    target = DeviceTarget.parse(text)
    assert (target.kind, target.index, target.memory_cap_bytes) == (kind, index, None)
    assert str(target) == ("cpu" if kind is DeviceKind.CPU else f"cuda:{index}")
    assert DeviceTarget.parse(str(target)) == target


@pytest.mark.parametrize("text", ["gpu0", "cpu:1", "cuda:-1", "cuda:x", "", "CUDA:0", " cpu"])
def test_a_bad_target_is_rejected_naming_what_is_expected(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown device .*'cpu' or 'cuda:N'|just 'cpu'"):
        DeviceTarget.parse(text)


def test_a_worker_pinned_to_a_gpu_sees_it_as_cuda_0_with_the_same_cap() -> None:
    target = DeviceTarget.parse("cuda:2", memory_cap_bytes=4 * GiB)
    assert target.cuda_visible_devices == "2"
    seen = target.in_worker()
    assert (str(seen), seen.memory_cap_bytes) == ("cuda:0", 4 * GiB)
    assert DeviceTarget.cpu().in_worker() == DeviceTarget.cpu()
    assert DeviceTarget.cpu().cuda_visible_devices == ""  # a CPU worker sees no GPU


def test_impossible_targets_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="the CPU has index 0"):
        DeviceTarget(DeviceKind.CPU, 1)
    with pytest.raises(ValueError, match="index is >= 0"):
        DeviceTarget(DeviceKind.CUDA, -1)
    with pytest.raises(ValueError, match="cap is >= 0 bytes"):
        DeviceTarget(DeviceKind.CUDA, 0, -5)


def test_a_plan_device_loads_on_its_gpu_capped_at_its_capacity() -> None:
    slice_ = Device("half", DeviceKind.CUDA, 1, 40 * GiB, 38 * GiB)
    assert slice_.target == DeviceTarget(DeviceKind.CUDA, 1, 40 * GiB)
    budget = Device("sim0", DeviceKind.CPU, 0, 512 * 2**20, 512 * 2**20)
    assert budget.target == DeviceTarget.cpu()  # a CPU budget is the plan's, not a cap
