"""Device inventory: probes are passed in as fakes, so no GPU or NVML is needed."""

from __future__ import annotations

import pytest

from modelyard.config.schema import DeviceConfig, DeviceKind
from modelyard.devices.inventory import build_inventory
from modelyard.devices.probe import GpuInfo, HostMemory, probe_gpus
from modelyard.errors import ConfigError

GiB = 2**30


def two_gpus() -> tuple[GpuInfo, ...]:
    return (GpuInfo(0, "A", 80 * GiB, 70 * GiB), GpuInfo(1, "A", 80 * GiB, 80 * GiB))


def no_gpus() -> tuple[GpuInfo, ...]:
    return ()


def host() -> HostMemory:
    return HostMemory(total_bytes=64 * GiB, available_bytes=48 * GiB)


def cuda(name: str, index: int, memory: str | None = None) -> DeviceConfig:
    data: dict[str, object] = {"name": name, "kind": "cuda", "index": index}
    if memory:
        data["memory"] = memory
    return DeviceConfig.model_validate(data)


def test_auto_is_every_gpu_with_its_free_memory() -> None:
    devices = build_inventory("auto", gpus=two_gpus, host=host)
    assert [(d.name, d.capacity_bytes, d.free_bytes) for d in devices] == [
        ("gpu0", 80 * GiB, 70 * GiB),
        ("gpu1", 80 * GiB, 80 * GiB),
    ]


def test_auto_without_gpus_is_the_cpu_with_its_ram() -> None:
    (device,) = build_inventory("auto", gpus=no_gpus, host=host)
    assert (device.name, device.kind, device.capacity_bytes, device.free_bytes) == (
        "cpu",
        DeviceKind.CPU,
        64 * GiB,
        48 * GiB,
    )


def test_a_slice_is_capped_and_bounded_by_what_the_gpu_has_free() -> None:
    small, big = build_inventory(
        [cuda("a", 0, "20GiB"), cuda("b", 1, "75GiB")], gpus=two_gpus, host=host
    )
    assert (small.capacity_bytes, small.free_bytes) == (20 * GiB, 20 * GiB)
    big_alone = build_inventory([cuda("b", 0, "75GiB")], gpus=two_gpus, host=host)[0]
    assert (big_alone.capacity_bytes, big_alone.free_bytes) == (75 * GiB, 70 * GiB)
    assert (big.capacity_bytes, big.free_bytes) == (75 * GiB, 75 * GiB)


def test_slices_of_one_gpu_that_fit_in_its_free_memory_keep_their_sizes() -> None:
    devices = build_inventory(
        [cuda(f"s{i}", 0, "17GiB") for i in range(4)], gpus=two_gpus, host=host
    )
    assert [(d.capacity_bytes, d.free_bytes) for d in devices] == [(17 * GiB, 17 * GiB)] * 4


def test_slices_of_one_gpu_share_its_free_memory_and_are_never_both_promised_it() -> None:
    # GPU 0: 80 GiB, 70 GiB free. 40 + 20 + 20 = 80 GiB declared: 10 GiB are held elsewhere.
    devices = build_inventory(
        [cuda("a", 0, "40GiB"), cuda("b", 0, "20GiB"), cuda("c", 0, "20GiB")],
        gpus=two_gpus,
        host=host,
    )
    assert [d.capacity_bytes for d in devices] == [40 * GiB, 20 * GiB, 20 * GiB]
    assert [d.free_bytes for d in devices] == [35 * GiB, 17.5 * GiB, 17.5 * GiB]
    assert sum(d.free_bytes for d in devices) <= 70 * GiB


def test_slices_declaring_more_than_their_gpu_has_are_refused_by_name() -> None:
    with pytest.raises(ConfigError) as caught:
        build_inventory([cuda("a", 0, "20GiB"), cuda("b", 0, "75GiB")], gpus=two_gpus, host=host)
    message = str(caught.value)
    assert "'a', 'b' are all on GPU 0" in message
    assert "95.0 GiB in all, but it has 80.0 GiB" in message
    # A whole GPU beside a slice of it declares its total: refused too.
    with pytest.raises(ConfigError, match=r"'whole', 'part' are all on GPU 1"):
        build_inventory([cuda("whole", 1), cuda("part", 1, "1GiB")], gpus=two_gpus, host=host)


def test_an_absent_gpu_with_memory_is_planned_offline() -> None:
    (device,) = build_inventory([cuda("g5", 5, "16GiB")], gpus=no_gpus, host=host)
    assert (device.present, device.capacity_bytes) == (False, 16 * GiB)


def test_an_absent_gpu_without_memory_says_to_give_memory() -> None:
    with pytest.raises(ConfigError, match=r"no GPU 5 was found; give it memory:"):
        build_inventory([cuda("g5", 5)], gpus=no_gpus, host=host)


def test_a_cpu_budget_is_planned_at_its_declared_size() -> None:
    sim = DeviceConfig.model_validate({"name": "sim0", "kind": "cpu", "memory": "512MiB"})
    (device,) = build_inventory([sim], gpus=no_gpus, host=host)
    assert (device.kind, device.capacity_bytes, device.free_bytes) == (
        DeviceKind.CPU,
        2**29,
        2**29,
    )


def test_the_real_probe_runs_without_a_gpu_or_nvml() -> None:
    found = probe_gpus()  # on a machine without GPUs: empty, and no exception
    assert all(g.total_bytes > 0 for g in found)
