"""The model repository: version folders on disk and the policy that picks among them."""

from modelyard.repository.versions import aspired_versions, check_labels, scan_versions

__all__ = ["aspired_versions", "check_labels", "scan_versions"]
