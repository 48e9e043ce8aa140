"""Devices: where models run, as typed values, and the probes that measure this machine.

- ``DeviceTarget`` (``target``): what a backend loads onto (kind, index, memory cap), parsed
  once from ``cpu`` / ``cuda:N``; every other module asks it (``is_cuda``, ``in_worker()``),
  never a string.
- ``Device`` (``device``): a named device of the plan (``gpu0``, ``sim0``) with its measured or
  declared capacity and free bytes; the planner fills these, ``Device.target`` says where its
  models load.
- ``probe`` (NVML, torch.cuda, psutil; imported lazily) measures the machine, and ``inventory``
  turns the config's ``devices:`` plus those measurements into ``Device`` values.

Import rule: this package's ``__init__`` exports only the pure values. The planner imports
them, never ``probe`` or ``inventory``: it is handed the measured devices by the composition
(``cli/plan.py``, ``Server.from_config`` in ``server/runtime.py``), so it stays free of
hardware and frameworks (``tests/unit/test_layering.py`` checks it).
"""

from modelyard.config.schema import DeviceKind
from modelyard.devices.device import Device
from modelyard.devices.target import DeviceTarget

__all__ = ["Device", "DeviceKind", "DeviceTarget"]
