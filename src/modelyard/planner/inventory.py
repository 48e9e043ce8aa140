"""The devices to plan for: GPUs found on the machine, the CPU, and devices declared in config.

GPUs are probed through NVML (``pynvml`` / ``nvidia-ml-py``) when importable, else through
``torch.cuda`` when importable; both are imported lazily and neither is required. The torch
fallback reads only each device's total memory: asking torch for free memory would create a CUDA
context in this process (hundreds of MiB on GPU 0), and the planning process must not hold one.

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

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from modelyard.config.schema import DeviceConfig, DeviceKind
from modelyard.config.sizes import format_size
from modelyard.errors import ConfigError
from modelyard.planner.plan import Device


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One GPU as a probe saw it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class HostMemory:
    """The machine's RAM: total, and available to new allocations."""

    total_bytes: int
    available_bytes: int


GpuProbe = Callable[[], Sequence[GpuInfo]]
HostProbe = Callable[[], HostMemory]


def probe_gpus() -> tuple[GpuInfo, ...]:
    """Every CUDA GPU: NVML if importable and working, else torch.cuda, else none."""
    found = _probe_nvml()
    if found is not None:
        return found
    return _probe_torch()


def probe_host() -> HostMemory:
    """RAM as psutil reports it."""
    import psutil  # a core dependency; imported here to keep module import free of side effects

    vm = psutil.virtual_memory()
    return HostMemory(total_bytes=int(vm.total), available_bytes=int(vm.available))


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


def _probe_nvml() -> tuple[GpuInfo, ...] | None:
    """GPUs through NVML; None when NVML is not installed or not usable (no driver)."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable NVML
        return None
    try:
        found = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            found.append(GpuInfo(i, name, int(mem.total), int(mem.free)))
        return tuple(found)
    except Exception:  # a GPU in a bad state: fall back to torch rather than fail planning
        return None
    finally:
        nvml.nvmlShutdown()


def _probe_torch() -> tuple[GpuInfo, ...]:
    """GPUs through torch.cuda: totals only (free := total), see the module doc for why."""
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        total = int(props.total_memory)
        found.append(GpuInfo(i, str(props.name), total, total))
    return tuple(found)
