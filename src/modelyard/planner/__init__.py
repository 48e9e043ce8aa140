"""Placement: which model version goes on which device, decided before anything loads.

Pure planning (``place``) takes demands and devices and imports no ML framework, web library or
grpc. The edges that touch the machine and the disk are separate: ``inventory`` (NVML / torch /
psutil, imported lazily), ``estimate`` (artifact headers, no framework), ``footprints`` (the
measured-footprint cache) and ``demands`` (config -> demands; ``plan_for_config``).
"""

from modelyard.planner.place import PlacerOptions, SolverUse, place
from modelyard.planner.plan import (
    Assignment,
    Device,
    DeviceUsage,
    FootprintSource,
    ModelDemand,
    Plan,
    Strategy,
    UnreadableVersion,
)

__all__ = [
    "Assignment",
    "Device",
    "DeviceUsage",
    "FootprintSource",
    "ModelDemand",
    "PlacerOptions",
    "Plan",
    "SolverUse",
    "Strategy",
    "UnreadableVersion",
    "place",
]
