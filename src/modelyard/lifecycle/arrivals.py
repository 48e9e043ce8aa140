"""Which version folders the controller may load now: settled new versions, and FAILED
versions whose files changed (the rule is ``modelyard.repository.settle``'s).

``Arrivals`` belongs to the controller and runs on its event loop; fingerprints are taken on
a thread (``asyncio.to_thread``), so a slow disk never holds the loop. It remembers, per
version, the fingerprint of the files a load was tried with (``tried``); a FAILED version
is retried only when its files differ from those and have settled. When a version waits for
its files to settle, it asks for a look again later (``recheck``), since a poller that sees
nothing change would not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from modelyard.config.schema import ModelConfig
from modelyard.ids import VersionKey
from modelyard.lifecycle.states import ModelState
from modelyard.repository import Fingerprint, SettleTracker, aspired_versions, fingerprint

log = logging.getLogger(__name__)

Recheck = Callable[[str], Awaitable[None]]
"""Converge one model by name (the controller's ``converge([name])``)."""

_RECHECK_MARGIN_S = 0.05
"""Look again a little after ``settle_s``, so that the second look is at least that late."""


class Arrivals:
    """The settle rule applied to a model's version folders (see the module doc)."""

    def __init__(self, settle_s: float, recheck: Recheck) -> None:
        self._tracker = SettleTracker(settle_s)
        self._recheck = recheck
        self._tried: dict[VersionKey, Fingerprint] = {}
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        self._waiting: set[Path] = set()
        """Folders already logged as waiting: one line per wait, not one per look."""
        self._closed = False

    async def tried(self, key: VersionKey, folder: Path) -> None:
        """Record the files a load of ``key`` is about to read (before reading them)."""
        self._tried[key] = await asyncio.to_thread(fingerprint, folder)

    def forget(self, key: VersionKey) -> None:
        self._tried.pop(key, None)

    async def loadable(
        self,
        model: ModelConfig,
        folders: Mapping[int, Path],
        states: Mapping[int, ModelState],
        *,
        settle: bool,
    ) -> tuple[list[int], list[int]]:
        """(versions to plan with, FAILED versions to retry) of ``model``.

        A new aspired version (not in ``states``) whose files have not settled is left out,
        as if not there yet (so ``latest: 1`` keeps the version it serves); ``settle=False``
        takes new versions as they are (start-up, a model just added). A FAILED aspired
        version whose files changed and settled is in the second list: the caller forgets it
        so that it is loaded afresh.
        """
        candidates = dict(folders)
        retry: list[int] = []
        waiting = False
        for _ in range(len(folders) + 1):
            aspired = aspired_versions(list(candidates), model.version_policy)
            new = [v for v in aspired if v not in states and settle]
            failed = [
                v
                for v in aspired
                if states.get(v) is ModelState.FAILED
                and VersionKey(model.name, v) in self._tried
                and v not in retry
            ]
            if not new and not failed:
                break
            looked = await asyncio.to_thread(_fingerprints, candidates, new + failed)
            for v in failed:
                now = looked[v]
                if now == self._tried.get(VersionKey(model.name, v)):
                    continue  # the files it failed with: it stays FAILED
                if self._tracker.settled(candidates[v], now):
                    log.info("model %s version %d: its files changed; loading it again",
                             model.name, v)  # fmt: skip
                    retry.append(v)
                else:
                    waiting = True
            unsettled = [v for v in new if not self._tracker.settled(candidates[v], looked[v])]
            for v in unsettled:
                if candidates[v] not in self._waiting:
                    self._waiting.add(candidates[v])
                    log.info("model %s version %d: waiting for its files to stop changing",
                             model.name, v)  # fmt: skip
                del candidates[v]
            self._waiting.difference_update(candidates[v] for v in new if v in candidates)
            waiting = waiting or bool(unsettled)
            if not unsettled:
                break
        if waiting:
            self._schedule(model.name)
        return sorted(candidates), retry

    def _schedule(self, name: str) -> None:
        if self._closed or name in self._rechecks:
            return

        async def later() -> None:
            await asyncio.sleep(self._tracker.settle_s + _RECHECK_MARGIN_S)
            self._rechecks.pop(name, None)  # a look that still finds changes schedules anew
            await self._recheck(name)

        self._rechecks[name] = asyncio.create_task(later(), name=f"settle-{name}")

    async def close(self) -> None:
        """Cancel the looks still to come (the server is stopping)."""
        self._closed = True
        tasks = list(self._rechecks.values())
        self._rechecks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _fingerprints(folders: Mapping[int, Path], versions: list[int]) -> dict[int, Fingerprint]:
    return {v: fingerprint(folders[v]) for v in versions}
