"""``DeviceTarget``: what a backend loads onto (``cpu``, ``cuda:N``), parsed once.

A target is a value: kind, CUDA ordinal and the memory cap of a GPU slice. It is parsed from
its text form at the edges where text comes in (a worker's argv, a wire message, a test) and
travels typed everywhere else: nothing in ``src`` tests a device string with ``startswith``.
Imports no framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelyard.config.schema import DeviceKind
from modelyard.errors import InvalidArgument

_TARGET = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True, slots=True)
class DeviceTarget:
    """Where to load: ``kind``, ``index`` (the CUDA ordinal as the loading process sees it; 0
    for the CPU) and ``memory_cap_bytes`` (the most a GPU slice may hold; None: no cap).

    ``str(target)`` is the text form (``cuda:1``, ``cpu``) without the cap, which is what the
    frameworks and the status API name.
    """

    kind: DeviceKind
    index: int = 0
    memory_cap_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"a device index is >= 0, got {self.index}")
        if self.kind is DeviceKind.CPU and self.index != 0:
            raise ValueError(f"the CPU has index 0, got {self.index}")
        if self.memory_cap_bytes is not None and self.memory_cap_bytes < 0:
            raise ValueError(f"a memory cap is >= 0 bytes, got {self.memory_cap_bytes}")

    @classmethod
    def parse(cls, text: str, memory_cap_bytes: int | None = None) -> DeviceTarget:
        """``cpu`` or ``cuda:N`` (``cuda`` alone means ``cuda:0``); InvalidArgument otherwise."""
        match = _TARGET.match(text)
        if match is None:
            raise InvalidArgument(f"unknown device {text!r}; expected 'cpu' or 'cuda:N'")
        kind = DeviceKind(match.group(1))
        if kind is DeviceKind.CPU and match.group(2) is not None:
            raise InvalidArgument(f"unknown device {text!r}; the CPU device is just 'cpu'")
        return cls(kind, int(match.group(2) or 0), memory_cap_bytes)

    @classmethod
    def cpu(cls) -> DeviceTarget:
        return cls(DeviceKind.CPU)

    @property
    def is_cuda(self) -> bool:
        return self.kind is DeviceKind.CUDA

    @property
    def cuda_visible_devices(self) -> str:
        """``CUDA_VISIBLE_DEVICES`` for a process pinned to this target: the ordinal, or ``""``
        (no GPU at all) for the CPU."""
        return str(self.index) if self.is_cuda else ""

    def in_worker(self) -> DeviceTarget:
        """This target as a worker pinned to it sees it: its only GPU is ``cuda:0``."""
        return DeviceTarget(self.kind, 0, self.memory_cap_bytes)

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"
