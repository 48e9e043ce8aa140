"""Which versions leave a device to make room: a pure rule over snapshots.

Each version's use is a **decayed count** (``Usage``): every request adds 1 and the sum halves
every ``half_life_s`` (10 s). A version asked for every second holds about 15; one asked for once,
a minute ago, about 0.02. Victims are taken coldest first (lowest count, then least recently
used, then the name), by bytes, until the incoming version fits. So:

- a version used every second is never evicted while a colder one could go instead;
- ``resident`` versions are never candidates;
- a version with a request in flight, or with requests waiting for its page-in, is never a
  candidate (``pinned``): it serves what waited for it before it can leave (no thrash loop).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelyard.ids import VersionKey

HALF_LIFE_S = 10.0
"""How fast a version's use count fades: it halves every 10 s without requests."""


class Usage:
    """A version's decayed request count and last use (seconds on a monotonic clock).

    Not thread-safe: one event loop.
    """

    __slots__ = ("_at", "_count", "half_life_s", "last_use")

    def __init__(self, half_life_s: float = HALF_LIFE_S) -> None:
        self._count = 0.0
        self._at = 0.0
        self.last_use = float("-inf")
        self.half_life_s = half_life_s

    def touch(self, now: float) -> None:
        """One request at ``now``."""
        self._count = self.score(now) + 1.0
        self._at = now
        self.last_use = now

    def score(self, now: float) -> float:
        """The decayed count at ``now``."""
        if self._count == 0.0:
            return 0.0
        return float(self._count * 0.5 ** (max(0.0, now - self._at) / self.half_life_s))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A version on the device, as the rule sees it."""

    key: VersionKey
    bytes: int
    score: float
    last_use: float
    pinned: bool = False
    """Requests in flight or waiting for it: it may not leave now."""
    resident: bool = False


def coldest_first(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The versions that may leave, coldest first (resident and pinned ones left out)."""
    movable = [c for c in candidates if not c.resident and not c.pinned]
    return sorted(movable, key=lambda c: (c.score, c.last_use, c.key))


def choose_victims(
    candidates: Iterable[Candidate], *, free_bytes: int, need_bytes: int
) -> list[VersionKey] | None:
    """The fewest coldest versions whose bytes make ``need_bytes`` fit in ``free_bytes`` plus
    theirs; ``[]`` when it fits already; None when even every movable version is not enough
    (the caller waits for a pinned one to be released)."""
    if need_bytes <= free_bytes:
        return []
    victims: list[VersionKey] = []
    for c in coldest_first(candidates):
        victims.append(c.key)
        free_bytes += c.bytes
        if need_bytes <= free_bytes:
            return victims
    return None
