"""The management state file: durable round trip, and its precedence over the config file."""

from __future__ import annotations

from pathlib import Path

from modelyard.config import parse_config
from modelyard.management.roots import ModelRoots
from modelyard.management.state import (
    ManagementState,
    ModelOverride,
    StateStore,
    apply_overrides,
    basis_of,
)

CONFIG = """
models:
  - {name: a, base_path: a}
  - {name: b, base_path: b}
"""


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s" / "state.json")
    assert store.load() == ManagementState()
    state = ManagementState({"a": ModelOverride(basis="x", unloaded=True, devices=("sim1",))})
    store.save(state)
    assert store.load() == state
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]


def test_overrides_apply_until_the_config_entry_changes(tmp_path: Path) -> None:
    config = parse_config(CONFIG, base_dir=tmp_path)
    a = config.models[0]
    state = ManagementState(
        {
            "a": ModelOverride(basis=basis_of(a), unloaded=True),
            "c": ModelOverride(added={"base_path": str(tmp_path / "c")}),
        }
    )
    desired, kept = apply_overrides(config, state)
    assert [m.name for m in desired.models] == ["b", "c"]
    assert kept == state
    edited = parse_config(CONFIG.replace("base_path: a", "base_path: a2"), base_dir=tmp_path)
    desired, kept = apply_overrides(edited, state)
    assert [m.name for m in desired.models] == ["a", "b", "c"]  # the newer intent wins
    assert set(kept.models) == {"c"}


def test_an_added_model_outside_todays_roots_is_dropped_at_start(tmp_path: Path) -> None:
    config = parse_config(CONFIG, base_dir=tmp_path / "repo")
    state = ManagementState(
        {
            "inside": ModelOverride(added={"base_path": str(tmp_path / "repo" / "c")}),
            "outside": ModelOverride(added={"base_path": str(tmp_path / "elsewhere" / "d")}),
        }
    )
    desired, kept = apply_overrides(config, state, ModelRoots.default_for(config))
    assert [m.name for m in desired.models] == ["a", "b", "inside"]
    assert set(kept.models) == {"inside"}
    desired, _ = apply_overrides(config, state, ModelRoots.of([tmp_path / "elsewhere"]))
    assert [m.name for m in desired.models] == ["a", "b", "outside"]
