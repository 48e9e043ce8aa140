"""A model's base path and its version folders: which versions exist, which are aspired.

A base path holds one folder per version, named by a positive decimal integer (``1/``, ``2/``,
``10/``). Folder names are read as TF Serving reads them (``safe_strto64``): ``007/`` is
version 7. When two folders name the same version (``7/`` and ``007/``), the canonical one
(``7/``) is that version and the other is ignored with a warning. Other entries (``tmp/``,
``.DS_Store``, ``1.bak``, ``0/``, a number beyond int64, non-ASCII digits) are not versions and
are ignored, as TF Serving ignores them. ``version_dir`` is the folder a version is read from.

The version policy picks the *aspired* versions among those found; a version left out of the
aspired set is to be unloaded (TF Serving's Source contract).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelyard.config.schema import VersionPolicy
from modelyard.errors import ConfigError
from modelyard.repository.settle import Fingerprint, fingerprint

log = logging.getLogger(__name__)

MAX_VERSION = 2**63 - 1
"""Versions are int64 on every API (TF Serving's and KServe's); a larger folder name is not one."""

_DECIMAL = re.compile(r"[0-9]+")
_warned: set[Path] = set()


def version_folders(base_path: Path) -> dict[int, Path]:
    """Version number -> its folder under ``base_path`` (see the module doc for the rules).

    Raises ConfigError if ``base_path`` is not a folder.
    """
    if not base_path.is_dir():
        raise ConfigError(f"base_path {base_path} does not exist or is not a folder")
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(base_path))
    except OSError as exc:
        raise ConfigError(f"cannot list base_path {base_path}: {exc.strerror}") from exc
    for entry in sorted(entries, key=lambda e: e.name):
        if not _DECIMAL.fullmatch(entry.name):
            continue
        version = int(entry.name)
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir or not 0 < version <= MAX_VERSION:
            continue
        path = Path(entry.path)
        other = found.get(version)
        if other is not None:
            keep, drop = (path, other) if entry.name == str(version) else (other, path)
            if drop not in _warned:  # once per folder, not on every poll
                _warned.add(drop)
                log.warning("%s and %s both name version %d; serving %s, ignoring %s",
                            keep, drop, version, keep.name, drop.name)  # fmt: skip
            path = keep
        found[version] = path
    return found


def scan_versions(base_path: Path) -> list[int]:
    """Version numbers under ``base_path``, ascending. Raises ConfigError if it is not a folder."""
    return sorted(version_folders(base_path))


def version_dir(base_path: Path, version: int) -> Path:
    """The folder of ``version`` under ``base_path``: ``<base>/<version>`` when it exists, else a
    non-canonical name of the same number (``007`` for 7), else ``<base>/<version>``."""
    canonical = base_path / str(version)
    if canonical.is_dir():
        return canonical
    try:
        return version_folders(base_path).get(version, canonical)
    except ConfigError:
        return canonical


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
) -> dict[str, tuple[tuple[int, Fingerprint], ...]]:
    """Model name -> (aspired version, fingerprint of its files) for each aspired version on
    disk; a missing base path gives ``()``. The fingerprints make a poller notice a version
    whose files change (one still being written, or a FAILED one being replaced)."""
    found: dict[str, tuple[tuple[int, Fingerprint], ...]] = {}
    for name, base_path, policy in models:
        try:
            folders = version_folders(base_path)
        except ConfigError:
            found[name] = ()
            continue
        aspired = aspired_versions(list(folders), policy)
        found[name] = tuple((v, fingerprint(folders[v])) for v in aspired)
    return found
