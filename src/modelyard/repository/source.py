"""The polling source: watches the base paths and the config file, and says when they change.

TF Serving's file-system source polls each base path every ``--file_system_poll_wait_seconds``
and announces the aspired versions; its server re-reads ``--model_config_file`` every
``--model_config_file_poll_wait_seconds``. ``PollingSource`` does both, but announces only that
something changed: the callbacks (the server's) re-read what they need and hand it to the
controller, which converges. The versions snapshot carries each aspired version's fingerprint
(its files' sizes and mtimes, ``settle``), so a version still being written, or a FAILED one
being replaced, is noticed too. A poll that finds nothing new costs one directory scan per
model, a stat per file of its aspired versions and one file read, and calls nothing.

Ownership and async safety: ``start`` creates its tasks on the running loop; ``stop`` cancels
them and waits. Scans run on a thread (``asyncio.to_thread``) so a slow disk never holds the
loop. A callback that raises is logged and the polling goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Snapshot = Callable[[], Hashable]
"""What to compare between two polls (e.g. model -> aspired versions, frozen)."""
OnChange = Callable[[], Awaitable[None]]


class PollingSource:
    """Calls ``on_versions`` when ``versions()`` changes and ``on_files`` when a watched file's
    content changes. An interval of 0 or less turns that poll off."""

    def __init__(
        self,
        *,
        versions: Snapshot,
        on_versions: OnChange,
        interval_s: float = 1.0,
        files: Sequence[Path] = (),
        on_files: OnChange | None = None,
        files_interval_s: float = 0.0,
    ) -> None:
        self._versions = versions
        self._on_versions = on_versions
        self._interval = interval_s
        self._files = tuple(files)
        self._on_files = on_files
        self._files_interval = files_interval_s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._interval > 0:
            self._tasks.append(asyncio.create_task(self._poll_versions(), name="poll-versions"))
        if self._files and self._on_files is not None and self._files_interval > 0:
            self._tasks.append(asyncio.create_task(self._poll_files(), name="poll-config"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _poll_versions(self) -> None:
        last = await asyncio.to_thread(self._versions)
        while True:
            await asyncio.sleep(self._interval)
            now = await asyncio.to_thread(self._versions)
            if now != last:
                log.info("repository changed; converging")
                await _call(self._on_versions)
                last = now

    async def _poll_files(self) -> None:
        assert self._on_files is not None
        last = await asyncio.to_thread(self._digest)
        while True:
            await asyncio.sleep(self._files_interval)
            now = await asyncio.to_thread(self._digest)
            if now != last and now:
                log.info("config file changed; reloading")
                await _call(self._on_files)
                last = now  # a broken edit is reported once, not on every poll

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for path in self._files:
            try:
                digest.update(path.read_bytes())
            except OSError:
                return ""  # mid-replace (an editor's rename): look again next poll
        return digest.hexdigest()


async def _call(callback: OnChange) -> None:
    try:
        await callback()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("applying a repository change failed")
