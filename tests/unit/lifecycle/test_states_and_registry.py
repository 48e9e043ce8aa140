import pytest

from modelyard.config import Platform
from modelyard.errors import NotFound, Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, VersionEntry
from modelyard.lifecycle.states import ALLOWED_TRANSITIONS, IllegalTransition, ModelState


def test_every_state_has_a_transition_rule() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(ModelState)


def test_available_cannot_jump_to_end() -> None:
    entry = VersionEntry(VersionKey("m", 1), Platform.ONNX)
    entry.transition(ModelState.LOADING)
    entry.transition(ModelState.AVAILABLE)
    with pytest.raises(IllegalTransition):
        entry.transition(ModelState.END)


def _registry() -> ModelRegistry:
    registry = ModelRegistry()
    for version, state in [
        (1, ModelState.AVAILABLE),
        (2, ModelState.AVAILABLE),
        (3, ModelState.FAILED),
    ]:
        entry = VersionEntry(VersionKey("m", version), Platform.ONNX)
        entry.state = state
        registry.add(entry)
    registry.set_labels("m", {"stable": 1})
    return registry


def test_default_version_is_the_highest_available() -> None:
    assert _registry().resolve("m").key.version == 2


def test_label_and_version_resolve() -> None:
    registry = _registry()
    assert registry.resolve("m", label="stable").key.version == 1
    assert registry.resolve("m", version=3).state is ModelState.FAILED


def test_unknown_names_list_what_exists() -> None:
    registry = _registry()
    with pytest.raises(NotFound, match="models: m"):
        registry.resolve("x")
    with pytest.raises(NotFound, match="versions: 1, 2, 3"):
        registry.resolve("m", version=7)
    with pytest.raises(NotFound, match="labels: stable"):
        registry.resolve("m", label="canary")


def test_failed_version_is_unavailable_with_its_reason() -> None:
    entry = VersionEntry(VersionKey("m", 3), Platform.ONNX)
    entry.transition(ModelState.LOADING)
    entry.transition(ModelState.FAILED, "model.onnx is corrupt")
    with pytest.raises(Unavailable, match=r"FAILED: model\.onnx is corrupt"):
        entry.pick_replica()
