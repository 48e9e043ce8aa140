"""A model's base path and its version folders: which versions exist, which are aspired.

A base path holds one folder per version, named by a positive integer (``1/``, ``2/``, ``10/``).
Other entries (``tmp/``, ``.DS_Store``, ``1.bak``) are ignored, as TF Serving ignores them. The
version policy picks the *aspired* versions among those found; a version left out of the
aspired set is to be unloaded (TF Serving's Source contract).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from modelyard.config.schema import VersionPolicy
from modelyard.errors import ConfigError


def scan_versions(base_path: Path) -> list[int]:
    """Version numbers under ``base_path``, ascending. Raises ConfigError if it is not a folder."""
    if not base_path.is_dir():
        raise ConfigError(f"base_path {base_path} does not exist or is not a folder")
    versions = []
    for entry in base_path.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0:
            versions.append(int(entry.name))
    return sorted(versions)


def aspired_versions(available: Sequence[int], policy: VersionPolicy) -> list[int]:
    """The versions the policy serves out of ``available``, ascending.

    ``specific`` versions that are absent are left out (the caller reports them as missing);
    ``latest: N`` takes the N highest; ``all`` takes every one.
    """
    ordered = sorted(set(available))
    if policy.all:
        return ordered
    if policy.specific is not None:
        return [v for v in ordered if v in set(policy.specific)]
    latest = policy.latest or 1
    return ordered[-latest:]


def check_labels(model: str, labels: Mapping[str, int], aspired: Sequence[int]) -> None:
    """Every label must point at a served version, as TF Serving requires."""
    for label, version in labels.items():
        if version not in aspired:
            raise ConfigError(
                f"model {model!r}: label {label!r} points at version {version}, which is not "
                f"served; served versions: {list(aspired) or 'none'}"
            )


def aspired_snapshot(
    models: Sequence[tuple[str, Path, VersionPolicy]],
) -> dict[str, tuple[int, ...]]:
    """Model name -> aspired versions now on disk; a missing base path gives ``()``."""
    found: dict[str, tuple[int, ...]] = {}
    for name, base_path, policy in models:
        try:
            found[name] = tuple(aspired_versions(scan_versions(base_path), policy))
        except ConfigError:
            found[name] = ()
    return found
