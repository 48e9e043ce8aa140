"""Load progress per device: one redrawn line of bars on a terminal, log lines otherwise.

``LoadProgress`` is told how many versions each device will load and then each outcome. On a
TTY it redraws one line (``sim0 [###---] 2/3  sim1 [######] 3/3``) on stderr; otherwise (a log
file, a test) it logs one line per finished load. Async safety: called from the event loop only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TextIO

log = logging.getLogger("modelyard.load")

_BAR = 10


class LoadProgress:
    def __init__(
        self, expected: Mapping[str, int], *, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._expected = dict(expected)
        self._done: dict[str, int] = dict.fromkeys(self._expected, 0)
        self._failed: dict[str, int] = dict.fromkeys(self._expected, 0)
        self._open = False

    def finished(self, device: str, model: str, ok: bool, detail: str = "") -> None:
        """One version on ``device`` finished loading (``ok``) or failed."""
        self._expected.setdefault(device, 0)
        self._done[device] = self._done.get(device, 0) + 1
        if not ok:
            self._failed[device] = self._failed.get(device, 0) + 1
        self._expected[device] = max(self._expected[device], self._done[device])
        if self._tty:
            self._redraw()
        else:
            log.info(
                "%s: %s %s (%d/%d)%s",
                device,
                "loaded" if ok else "FAILED",
                model,
                self._done[device],
                self._expected[device],
                f": {detail}" if detail else "",
            )

    def close(self) -> None:
        """End the redrawn line so later output starts on a fresh one."""
        if self._tty and self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False

    def line(self) -> str:
        parts = []
        for device, total in sorted(self._expected.items()):
            done = self._done.get(device, 0)
            filled = _BAR * done // total if total else _BAR
            failed = f" ({self._failed[device]} failed)" if self._failed.get(device) else ""
            parts.append(f"{device} [{'#' * filled}{'-' * (_BAR - filled)}] {done}/{total}{failed}")
        return "loading: " + "  ".join(parts)

    def _redraw(self) -> None:
        self._stream.write("\r\x1b[2K" + self.line())
        self._stream.flush()
        self._open = True
        if all(self._done.get(d, 0) >= n for d, n in self._expected.items()):
            self.close()
