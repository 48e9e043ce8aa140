"""The host-memory tier: copies of version folders in shared memory, owned by the front end.

A version in host memory is a copy of its version folder under ``/dev/shm`` (tmpfs: RAM, not
disk). Workers load from a **stable link** per version, ``<store>/links/<model>@<version>``, a
symlink that points at the copy while there is one and at the original folder otherwise. So:

- a page-in from host memory is an ordinary load whose reads come from RAM, for every backend,
  with no change to any backend;
- a worker that is restarted reloads its versions through the same links: from host memory,
  without reading their files again (the copies belong to the front end, not to the worker);
- dropping a copy (host memory full) flips the link back to the original first, so a load that
  starts later reads the disk, and one already reading keeps its open files (tmpfs keeps an
  unlinked file's pages until it is closed).

``capacity_bytes`` bounds the bytes of the copies. Thread safety: ``copy_in`` runs on a thread;
the book (``_copies``) is guarded by a lock, so ``holds``/``used_bytes`` may be read anywhere.
Side effects only in ``start``, the copy calls and ``close``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from modelyard.ids import VersionKey

SHM = Path("/dev/shm")


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (links followed; 0 when it is missing)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


class HostStore:
    """The copies of version folders held in host memory, within ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int, *, parent: Path | None = None) -> None:
        """``parent``: where the store's folder goes (default ``/dev/shm`` when it exists and
        is writable, else the temporary folder: then "host memory" is the page cache)."""
        self.capacity_bytes = capacity_bytes
        self._parent = parent
        self._root: Path | None = None
        self._copies: dict[VersionKey, tuple[Path, int]] = {}
        self._originals: dict[VersionKey, Path] = {}
        self._lock = threading.Lock()
        self._serial = 0

    def start(self) -> Path:
        """Create the store's folder; returns it."""
        parent = self._parent
        if parent is None:
            parent = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None
        _sweep(parent if parent is not None else Path(tempfile.gettempdir()))
        root = Path(tempfile.mkdtemp(prefix=f"modelyard-{os.getpid()}-", dir=parent))
        (root / "links").mkdir()
        (root / "data").mkdir()
        self._root = root
        return root

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("HostStore.start() was not called")
        return self._root

    # -- the book ------------------------------------------------------------------------

    def holds(self, key: VersionKey) -> bool:
        with self._lock:
            return key in self._copies

    def bytes_of(self, key: VersionKey) -> int:
        with self._lock:
            copy = self._copies.get(key)
            return copy[1] if copy is not None else 0

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._copies.values())

    def held(self) -> list[VersionKey]:
        with self._lock:
            return list(self._copies)

    # -- links and copies ----------------------------------------------------------------

    def link(self, key: VersionKey, original: Path) -> Path:
        """The stable folder workers load ``key`` from (points at the original until a copy
        is made)."""
        path = self.root / "links" / f"{key.model}@{key.version}"
        with self._lock:
            self._originals[key] = original
            if key not in self._copies:
                _point(path, original)
        return path

    def copy_in(self, key: VersionKey, size: int) -> bool:
        """Copy ``key``'s original folder into host memory and point its link at the copy.

        Blocking (reads the disk): call it on a thread. False, with nothing held, when the copy
        would pass ``capacity_bytes`` (the caller drops colder copies first) or the folder
        cannot be read. True when the copy is held (also when it already was).
        """
        with self._lock:
            if key in self._copies:
                return True
            original = self._originals[key]
            held = sum(s for _, s in self._copies.values())
            if held + size > self.capacity_bytes:
                return False
            self._serial += 1
            dest = self.root / "data" / f"{key.model}@{key.version}.{self._serial}"
            self._copies[key] = (dest, size)  # reserved while copying
        try:
            shutil.copytree(original, dest, symlinks=False)
        except OSError:
            shutil.rmtree(dest, ignore_errors=True)
            with self._lock:
                self._copies.pop(key, None)
            return False
        with self._lock:
            if self._copies.get(key, (None, 0))[0] == dest:
                _point(self.root / "links" / f"{key.model}@{key.version}", dest)
                return True
        shutil.rmtree(dest, ignore_errors=True)  # dropped while copying
        return False

    def drop(self, key: VersionKey) -> int:
        """Let go of ``key``'s copy (its link points at the original again); bytes freed."""
        with self._lock:
            copy = self._copies.pop(key, None)
            original = self._originals.get(key)
            if copy is None:
                return 0
            if original is not None:
                _point(self.root / "links" / f"{key.model}@{key.version}", original)
        shutil.rmtree(copy[0], ignore_errors=True)
        return copy[1]

    def forget(self, key: VersionKey) -> None:
        """``key`` is no longer served: drop its copy and its link."""
        self.drop(key)
        with self._lock:
            self._originals.pop(key, None)
        if self._root is not None:
            (self._root / "links" / f"{key.model}@{key.version}").unlink(missing_ok=True)

    def close(self) -> None:
        """Remove every copy and link (the server stops)."""
        with self._lock:
            self._copies.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


def _sweep(parent: Path) -> None:
    """Remove the stores of servers that ended without stopping (SIGKILL, a crash): their
    copies would hold host memory (tmpfs) until the machine restarts. A store whose process
    still exists (or whose id was reused) is left alone."""
    for path in parent.glob("modelyard-*-*"):
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _exists(pid) or not (path / "links").is_dir():
            continue
        shutil.rmtree(path, ignore_errors=True)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target``, atomically (a reader sees the old or the new)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
