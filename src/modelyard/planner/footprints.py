"""Measured footprints, persisted so the next plan uses what a real load took.

The cache is one JSON file: ``$MODELYARD_CACHE_DIR/footprints.json``, else
``~/.cache/modelyard/footprints.json``. An entry is keyed by the version folder's absolute path
and is valid only while the folder's *stamp* (total bytes and newest mtime of its files) is
unchanged, so a replaced artifact is estimated afresh. Measurements are kept per device kind
(GPU bytes and CPU RSS differ); ``lookup`` returns the largest, since the planner wants an upper
bound.

Writes replace the file atomically (write a temporary file, then rename), so a reader never
sees half a file. A record is a read-modify-write of the whole file; it holds an exclusive
``flock`` on ``footprints.json.lock`` throughout, so servers sharing a cache never lose each
other's records. Where ``fcntl`` does not exist (Windows) there is no lock: two processes
recording at the same moment may lose one record, which only means the next plan estimates that
version again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.config.schema import DeviceKind

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Stamp:
    """What identifies an artifact's contents cheaply: total size and newest mtime."""

    size_bytes: int
    mtime_ns: int

    @staticmethod
    def of(artifact: Path) -> Stamp:
        """Stamp of a file, or of every file under a folder."""
        if artifact.is_file():
            st = artifact.stat()
            return Stamp(st.st_size, st.st_mtime_ns)
        size = mtime = 0
        for p in artifact.rglob("*"):
            if p.is_file():
                st = p.stat()
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
        return Stamp(size, mtime)


def default_cache_path() -> Path:
    """``$MODELYARD_CACHE_DIR/footprints.json``, else ``~/.cache/modelyard/footprints.json``."""
    root = os.environ.get("MODELYARD_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "modelyard"
    return base / "footprints.json"


class FootprintCache:
    """Read and write measured footprints in one JSON file (see the module doc).

    Not thread-safe within a process; across processes see the module doc. A missing or
    unreadable file reads as empty: the cache is an optimisation, never a reason to fail.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_cache_path()

    def lookup(self, artifact: Path) -> int | None:
        """The largest measured footprint recorded for ``artifact`` as it is now, or None."""
        entry = self._read().get(_key(artifact))
        if not isinstance(entry, dict) or not artifact.exists():
            return None
        stamp = Stamp.of(artifact)
        if entry.get("size_bytes") != stamp.size_bytes or entry.get("mtime_ns") != stamp.mtime_ns:
            return None
        measured = entry.get("measured_bytes")
        if not isinstance(measured, dict):
            return None
        values = [int(v) for v in measured.values() if isinstance(v, int) and v >= 0]
        return max(values) if values else None

    def record_measured(self, artifact: Path, measured_bytes: int, kind: DeviceKind) -> None:
        """Record what loading ``artifact`` took on a device of ``kind``.

        A changed artifact drops the measurements taken of its previous contents.
        """
        if measured_bytes < 0:
            raise ValueError(f"measured_bytes must be >= 0, got {measured_bytes}")
        with self._locked():
            self._record(artifact, measured_bytes, kind)

    def _record(self, artifact: Path, measured_bytes: int, kind: DeviceKind) -> None:
        data = self._read()
        stamp = Stamp.of(artifact)
        key = _key(artifact)
        entry = data.get(key)
        same = (
            isinstance(entry, dict)
            and entry.get("size_bytes") == stamp.size_bytes
            and entry.get("mtime_ns") == stamp.mtime_ns
            and isinstance(entry.get("measured_bytes"), dict)
        )
        measured: dict[str, int] = dict(entry["measured_bytes"]) if same and entry else {}
        measured[kind.value] = int(measured_bytes)
        data[key] = {
            "size_bytes": stamp.size_bytes,
            "mtime_ns": stamp.mtime_ns,
            "measured_bytes": measured,
        }
        self._write(data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cache's lock file exclusively (a no-op where fcntl does not exist)."""
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            return {}
        entries = raw.get("entries")
        return dict(entries) if isinstance(entries, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"format": _FORMAT, "entries": entries}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".footprints.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(payload)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def record_measured(
    artifact: Path, measured_bytes: int, kind: DeviceKind, *, cache_path: Path | None = None
) -> None:
    """Record a measured footprint in the default cache (or ``cache_path``); for serving code."""
    FootprintCache(cache_path).record_measured(artifact, measured_bytes, kind)


def _key(artifact: Path) -> str:
    return str(artifact.resolve())
