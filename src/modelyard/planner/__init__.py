"""Placement: which model version goes on which device, decided before anything loads.

Pure planning (``place``) takes demands and devices and imports no ML framework, web library or
grpc. The devices come measured from the caller (``modelyard.devices.inventory``, which owns the
hardware probes): the planner never probes. The edges that read the disk are separate:
``estimate`` (artifact headers, no framework), ``footprints`` (the measured-footprint cache) and
``demands`` (config -> demands; ``plan_for_config``).
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
