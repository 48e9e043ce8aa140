"""The device a backend loads onto (``cpu``, ``cuda:N``), parsed once. Imports no framework."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelyard.config.schema import DeviceKind
from modelyard.errors import InvalidArgument

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True, slots=True)
class Device:
    """A parsed device. ``index`` is the CUDA ordinal as the loading process sees it; 0 for cpu."""

    kind: DeviceKind
    index: int

    @classmethod
    def parse(cls, device: str) -> Device:
        """``cpu`` or ``cuda:N`` (``cuda`` alone means ``cuda:0``); InvalidArgument otherwise."""
        match = _DEVICE.match(device)
        if match is None:
            raise InvalidArgument(f"unknown device {device!r}; expected 'cpu' or 'cuda:N'")
        kind = DeviceKind(match.group(1))
        if kind is DeviceKind.CPU and match.group(2) is not None:
            raise InvalidArgument(f"unknown device {device!r}; the CPU device is just 'cpu'")
        return cls(kind, int(match.group(2) or 0))

    @property
    def is_cuda(self) -> bool:
        return self.kind is DeviceKind.CUDA

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"
