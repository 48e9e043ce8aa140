"""The devices to plan for: GPUs found on the machine, the CPU, and devices declared in config.

``build_inventory`` applies the rules below to what the probes (``modelyard.devices.probe``)
measured; it is called by the composition (``modelyard plan``, ``modelyard serve``), which hands
the resulting ``Device`` values to the planner.

Declared devices (``devices:`` in config) are planned for even when absent, so ``modelyard plan``
works offline. Rules, per declared device:
- ``kind: cuda`` with ``memory:`` is a slice capped at that size; when GPU ``index`` is present,
  its free memory bounds the slice. Absent, the slice is planned at its declared size.
- ``kind: cuda`` without ``memory:`` needs the GPU to be present (its total and free are used).
- Devices on one present GPU share it: their ``memory:`` (a whole GPU counts its total) may add
  up to at most the GPU's total, else ConfigError; when they add up to more than it has free,
  each is planned with its share of the free memory, in proportion to its size. Two slices are
  never both promised the same bytes.
- ``kind: cpu`` with ``memory:`` is a budget planned at exactly that size, whatever the host
  has: it is a stand-in for a device, not a measurement.
- ``kind: cpu`` without ``memory:`` is the host: total RAM, and available RAM as free.

``devices: auto`` is every GPU found (named ``gpu0``, ``gpu1``, ...), or else one device ``cpu``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from modelyard.config.schema import DeviceConfig, DeviceKind
from modelyard.config.sizes import format_size
from modelyard.devices.device import Device
from modelyard.devices.probe import GpuInfo, GpuProbe, HostMemory, HostProbe, probe_gpus, probe_host
from modelyard.errors import ConfigError


def build_inventory(
    declared: Literal["auto"] | Sequence[DeviceConfig],
    *,
    gpus: GpuProbe = probe_gpus,
    host: HostProbe = probe_host,
) -> tuple[Device, ...]:
    """Devices for the planner from the config's ``devices`` (see the module doc for the rules).

    ``gpus`` and ``host`` are the probes; tests pass fakes. Probes run only when needed: a list of
    declared devices that all carry ``memory:`` and include no cuda device probes nothing.
    Raises ConfigError for a cuda device with no ``memory:`` whose GPU is absent.
    """
    if declared == "auto":
        found = gpus()
        if found:
            return tuple(_whole_gpu(f"gpu{g.index}", g) for g in found)
        ram = host()
        return (_host_device("cpu", ram),)
    on_nodes = [d.name for d in declared if d.node is not None]
    if on_nodes:
        raise ConfigError(
            f"device(s) {', '.join(on_nodes)} name a node, which needs a cluster: add "
            f"cluster: {{engine: ray, address: auto}} to the config or pass --ray-address "
            f"(see docs/cluster.md)"
        )
    need_gpus = any(d.kind is DeviceKind.CUDA for d in declared)
    by_index = {g.index: g for g in gpus()} if need_gpus else {}
    devices: list[Device] = []
    for d in declared:
        if d.kind is DeviceKind.CUDA:
            devices.append(_declared_gpu(d, by_index.get(d.index)))
        elif d.memory_bytes is not None:
            cap = d.memory_bytes
            devices.append(Device(d.name, DeviceKind.CPU, 0, cap, cap, present=True))
        else:
            devices.append(_host_device(d.name, host()))
    for gpu in by_index.values():
        _share_gpu(devices, gpu)
    return tuple(devices)


def _share_gpu(devices: list[Device], gpu: GpuInfo) -> None:
    """Bound the devices declared on ``gpu`` by what it has, together (in place)."""
    on_it = [i for i, d in enumerate(devices) if d.kind is DeviceKind.CUDA and d.index == gpu.index]
    declared = sum(devices[i].capacity_bytes for i in on_it)
    if len(on_it) < 2 or declared <= gpu.free_bytes:
        return
    names = ", ".join(repr(devices[i].name) for i in on_it)
    if declared > gpu.total_bytes:
        raise ConfigError(
            f"devices {names} are all on GPU {gpu.index} ({gpu.name}) and declare "
            f"{format_size(declared)} in all, but it has {format_size(gpu.total_bytes)}; "
            f"give them memory: sizes that add up to at most that (a cuda device without "
            f"memory: is the whole GPU)"
        )
    for i in on_it:
        d = devices[i]
        share = d.capacity_bytes * gpu.free_bytes // declared
        devices[i] = replace(d, free_bytes=min(d.free_bytes, share))


def _whole_gpu(name: str, g: GpuInfo) -> Device:
    return Device(name, DeviceKind.CUDA, g.index, g.total_bytes, g.free_bytes, present=True)


def _host_device(name: str, ram: HostMemory) -> Device:
    return Device(name, DeviceKind.CPU, 0, ram.total_bytes, ram.available_bytes, present=True)


def _declared_gpu(d: DeviceConfig, gpu: GpuInfo | None) -> Device:
    if gpu is None:
        if d.memory_bytes is None:
            raise ConfigError(
                f"device {d.name!r} is cuda index {d.index}, but no GPU {d.index} was found; "
                f"give it memory: (e.g. memory: 16GiB) to plan for it without the GPU"
            )
        cap = d.memory_bytes
        return Device(d.name, DeviceKind.CUDA, d.index, cap, cap, present=False)
    cap = gpu.total_bytes if d.memory_bytes is None else d.memory_bytes
    # Memory the slice cannot get: what others already hold on the GPU beyond its spare room.
    free = min(cap, gpu.free_bytes)
    return Device(d.name, DeviceKind.CUDA, d.index, cap, free, present=True)
