"""Aspired-version policy: what the controller should do next for one model, as pure functions.

The repository source says which versions are *aspired* (TF Serving's Source contract: leaving a
version out means unload it). The controller takes a ``ModelSnapshot`` of one model and asks
``next_action`` for one step; it carries the step out and asks again, until ``None``. When the
planner finds no room for a version ``next_action`` wants loaded, ``when_full`` says what to do
instead. Neither function has side effects, so each rule is tested on plain values.

Rules (TF Serving's availability-preserving policy, plus modelyard's resource swap):

1. An aspired version not yet tried is loaded, newest first.
2. A version no longer aspired is unloaded once an aspired version is AVAILABLE (or when none is
   aspired at all): requests never find the model with nothing to serve because of a swap.
   A failed new version never replaces a good one: the old stays until a new one is AVAILABLE.
3. A version that is not aspired and not serving (FAILED, or still waiting for room) is
   forgotten.
4. No room for a load (``when_full``): with ``swap: resource`` an old version that is serving is
   unloaded first, the new one loads in its place, and should the new one fail the old one is
   loaded again (``fallback``); otherwise the load is refused and the reason shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from modelyard.config.schema import SwapPolicy
from modelyard.lifecycle.states import ModelState


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """One model as the controller sees it between two steps."""

    name: str
    aspired: frozenset[int]
    """Versions the source wants served."""
    states: Mapping[int, ModelState]
    """Every version the registry holds, by number."""
    swap: SwapPolicy = SwapPolicy.AVAILABILITY
    fallback: int | None = None
    """A version unloaded by a resource swap, to load again if its replacement fails."""


@dataclass(frozen=True, slots=True)
class Load:
    version: int


@dataclass(frozen=True, slots=True)
class Unload:
    version: int
    make_room_for: int | None = None
    """Set when unloading to make room (a resource swap): the version may come back as the
    fallback if ``make_room_for`` fails."""


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop a version that is neither aspired nor serving from the registry."""

    version: int


@dataclass(frozen=True, slots=True)
class Refuse:
    """Leave ``version`` waiting: it does not fit and the policy may not make room."""

    version: int
    reason: str


Action = Load | Unload | Forget | Refuse


def next_action(s: ModelSnapshot) -> Action | None:
    """The next step toward the aspired versions of ``s``, or None when it is converged."""
    serving_aspired = [v for v in s.aspired if s.states.get(v) is ModelState.AVAILABLE]
    for version in sorted(s.states):
        state = s.states[version]
        if version in s.aspired or version == s.fallback:
            continue
        if state is ModelState.AVAILABLE and (serving_aspired or not s.aspired):
            return Unload(version)
        if state in (ModelState.FAILED, ModelState.START, ModelState.END):
            return Forget(version)
    pending = [v for v in s.aspired if s.states.get(v, ModelState.START) is ModelState.START]
    if pending:
        return Load(max(pending))
    if s.fallback is not None:
        tried = [s.states.get(v) for v in s.aspired]
        all_failed = all(t is ModelState.FAILED for t in tried)
        if not serving_aspired and all_failed and s.states.get(s.fallback) is None:
            return Load(s.fallback)
    return None


def when_full(s: ModelSnapshot, version: int, explanation: str) -> Unload | Refuse:
    """What to do when the plan has no room to load ``version`` of ``s``."""
    old = sorted(
        v for v, st in s.states.items() if v not in s.aspired and st is ModelState.AVAILABLE
    )
    if s.swap is SwapPolicy.RESOURCE and old:
        return Unload(old[0], make_room_for=version)
    hint = ""
    if old:
        hint = (
            f"; version {old[-1]} keeps serving (swap: availability needs room for both; "
            "swap: resource would unload it first)"
        )
    return Refuse(version, f"waiting for room: {explanation}{hint}")
