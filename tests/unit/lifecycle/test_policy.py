"""The aspired-version policy, rule by rule, on plain snapshots."""

from __future__ import annotations

from modelyard.config.schema import SwapPolicy
from modelyard.lifecycle.policy import (
    Forget,
    Load,
    ModelSnapshot,
    Refuse,
    Unload,
    next_action,
    when_full,
)
from modelyard.lifecycle.states import ModelState

A, F, S = ModelState.AVAILABLE, ModelState.FAILED, ModelState.START


def snap(aspired: set[int], states: dict[int, ModelState], **kw: object) -> ModelSnapshot:
    return ModelSnapshot("m", frozenset(aspired), states, **kw)  # type: ignore[arg-type]


def test_a_new_version_loads_before_the_old_unloads() -> None:
    assert next_action(snap({2}, {1: A})) == Load(2)
    assert next_action(snap({2}, {1: A, 2: A})) == Unload(1)
    assert next_action(snap({2}, {2: A})) is None


def test_a_failed_version_never_replaces_a_good_one() -> None:
    assert next_action(snap({3}, {2: A, 3: F})) is None


def test_nothing_aspired_unloads_everything_and_forgets_failures() -> None:
    assert next_action(snap(set(), {1: A})) == Unload(1)
    assert next_action(snap({2}, {1: F, 2: A})) == Forget(1)


def test_newest_pending_version_loads_first() -> None:
    assert next_action(snap({1, 2, 3}, {1: A})) == Load(3)
    assert next_action(snap({2}, {1: A, 2: S})) == Load(2)


def test_no_room_refuses_with_availability_and_unloads_first_with_resource() -> None:
    full = snap({2}, {1: A})
    refused = when_full(full, 2, "sim0 has 10 MiB free")
    assert isinstance(refused, Refuse)
    assert "sim0 has 10 MiB free" in refused.reason
    assert "swap: resource" in refused.reason
    resource = snap({2}, {1: A}, swap=SwapPolicy.RESOURCE)
    assert when_full(resource, 2, "full") == Unload(1, make_room_for=2)


def test_resource_swap_falls_back_to_the_old_version_when_the_new_fails() -> None:
    assert next_action(snap({2}, {2: F}, fallback=1)) == Load(1)
    assert next_action(snap({2}, {1: A, 2: F}, fallback=None)) is None
