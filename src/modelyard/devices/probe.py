"""The hardware probes: GPUs through NVML or torch.cuda, host memory through psutil.

GPUs are probed through NVML (``pynvml`` / ``nvidia-ml-py``) when importable, else through
``torch.cuda`` when importable; both are imported lazily and neither is required. The torch
fallback reads only each device's total memory: asking torch for free memory would create a CUDA
context (hundreds of MiB on GPU 0). It runs in a child process, and only when the machine has a
GPU driver at all: importing torch into the front end cost it 200 MB of memory for good and
about a second of start-up, to learn that a machine without a GPU driver has no GPU.

This is the one module of ``src`` outside the backends and the worker host that may import a
framework (lazily, inside a function). The planner never imports it: its callers probe and pass
the measured values in (see ``modelyard.devices``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


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


GPU_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")
"""Any of these exists where a CUDA (or ROCm, which torch.cuda also reports) driver is loaded."""


def gpu_driver_present(paths: Sequence[str] = GPU_DRIVER_PATHS) -> bool:
    """Whether this machine has a GPU driver torch.cuda could use (Linux); True where that
    cannot be told (not Linux), so the probe then asks torch."""
    if not os.path.isdir("/proc"):
        return True
    return any(os.path.exists(p) for p in paths)


def _probe_torch() -> tuple[GpuInfo, ...]:
    """GPUs through torch.cuda, in a child process: totals only (free := total), see the module
    doc for why. None found when there is no GPU driver, without asking torch."""
    if importlib.util.find_spec("torch") is None or not gpu_driver_present():
        return ()
    child = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=120
    )
    if child.returncode != 0:
        log.warning("probing GPUs through torch failed: %s", child.stderr.strip()[-500:])
        return ()
    rows = json.loads(child.stdout or "[]")
    return tuple(GpuInfo(int(i), str(name), int(total), int(total)) for i, name, total in rows)


_TORCH_PROBE = """
import json, torch
rows = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        rows.append([i, str(p.name), int(p.total_memory)])
print(json.dumps(rows))
"""


def nvml_process_bytes() -> int:
    """GPU bytes NVML charges to this process on its first visible GPU (what a worker measures
    when ONNX Runtime, not torch, holds the memory); 0 without NVML."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return 0
    try:
        nvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        handle = nvml.nvmlDeviceGetHandleByIndex(int(visible))
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid():
                return int(proc.usedGpuMemory or 0)
    except Exception:  # NVML is a measurement aid; no measurement is not an error
        return 0
    return 0
