"""When a version folder's files have stopped changing, so that loading it reads whole files.

Copying a model into a base path takes time (a 4 GB file over a network mount, a ``cp -r``
of a folder), and a poller can find the version half written. The rule, applied to versions
found while serving (at start-up every version on disk is loaded at once):

    A version is *settled* when the fingerprint of its folder -- every file's relative path,
    size and modification time (ns) -- is the same in two looks at least ``settle_s`` apart.

Only settled versions are loaded. A FAILED version is loaded again once its fingerprint differs
from the one it had when it was tried, and the new one has settled: replacing a broken file
retries it, touching nothing retries nothing. Writers that rename a complete folder in place
(the safe way, as TF Serving recommends) pay one ``settle_s`` of delay, no more.

``SettleTracker`` keeps the last fingerprint seen per folder; it is owned by one event loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size in bytes, mtime in ns) of every file under a folder, sorted."""

DEFAULT_SETTLE_S = 1.0
"""How long a new version's files must stay unchanged before it is loaded."""

_MAX_FILES = 10_000
"""A bound on the files looked at per folder: a version is a model, not a dataset."""


def fingerprint(folder: Path) -> Fingerprint:
    """The fingerprint of ``folder`` (see the module doc); ``()`` when it cannot be read.

    Symbolic links are followed for files (a model may link to shared weights) but not for
    folders (a link cycle must not hang a poll). Never raises.
    """
    found: list[tuple[str, int, int]] = []
    stack = [folder]
    while stack and len(found) < _MAX_FILES:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between the listing and the stat: the next look sees it
            rel = os.path.relpath(entry.path, folder)
            found.append((rel, st.st_size, st.st_mtime_ns))
    return tuple(sorted(found))


class SettleTracker:
    """Remembers what each folder looked like and since when (the rule in the module doc)."""

    def __init__(
        self, settle_s: float = DEFAULT_SETTLE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[Path, tuple[Fingerprint, float]] = {}

    def settled(self, folder: Path, now: Fingerprint) -> bool:
        """True when ``now`` (the folder's fingerprint) was already seen ``settle_s`` ago."""
        last = self._seen.get(folder)
        t = self._clock()
        if last is None or last[0] != now:
            self._seen[folder] = (now, t)
            return self.settle_s <= 0
        return t - last[1] >= self.settle_s

    def forget(self, folder: Path) -> None:
        self._seen.pop(folder, None)
