"""The model repository: version folders on disk, the policy that picks among them, and the
source that polls them."""

from modelyard.repository.source import PollingSource
from modelyard.repository.versions import (
    aspired_snapshot,
    aspired_versions,
    check_labels,
    scan_versions,
)

__all__ = [
    "PollingSource",
    "aspired_snapshot",
    "aspired_versions",
    "check_labels",
    "scan_versions",
]
