"""The model repository: version folders on disk, the policy that picks among them, and the
source that polls them."""

from modelyard.repository.settle import Fingerprint, SettleTracker, fingerprint
from modelyard.repository.source import PollingSource
from modelyard.repository.versions import (
    aspired_snapshot,
    aspired_versions,
    check_labels,
    scan_versions,
    version_dir,
    version_folders,
)

__all__ = [
    "Fingerprint",
    "PollingSource",
    "SettleTracker",
    "aspired_snapshot",
    "aspired_versions",
    "check_labels",
    "fingerprint",
    "scan_versions",
    "version_dir",
    "version_folders",
]
