"""Model roots: where management calls may read models from."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import ModelConfig, ServerConfig
from modelyard.errors import PermissionDenied
from modelyard.management.roots import ModelRoots


def _config(*base_paths: Path) -> ServerConfig:
    models = tuple(ModelConfig(name=f"m{i}", base_path=p) for i, p in enumerate(base_paths))
    return ServerConfig(models=models)


def test_default_roots_are_the_folders_holding_the_configured_models(tmp_path: Path) -> None:
    (tmp_path / "repo" / "a").mkdir(parents=True)
    roots = ModelRoots.default_for(
        _config(tmp_path / "repo" / "a", tmp_path / "repo" / "b", tmp_path / "other" / "c")
    )
    assert roots.roots == ((tmp_path / "repo").resolve(), (tmp_path / "other").resolve())
    assert roots.allows(tmp_path / "repo" / "new")
    assert not roots.allows(tmp_path / "elsewhere")


def test_a_model_at_the_filesystem_root_never_makes_slash_a_root() -> None:
    roots = ModelRoots.default_for(_config(Path("/srv-model")))
    assert roots.roots == (Path("/srv-model"),)
    assert not roots.allows(Path("/etc"))


def test_dotdot_and_symlinks_are_resolved_before_the_check(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inside").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    roots = ModelRoots.of([root])
    assert roots.allows(root / "inside")
    assert roots.allows(root / "not-yet-there")
    assert not roots.allows(root / "inside" / ".." / ".." / "outside")
    assert not roots.allows(root / "escape")
    assert not roots.allows(root / "loop")
    with pytest.raises(PermissionDenied) as info:
        roots.check("m", root / "escape")
    message = info.value.message
    assert str(root.resolve()) in message
    assert str(root / "escape") in message
    assert str(outside) not in message  # where the symlink leads is not told


def test_no_roots_refuse_everything() -> None:
    roots = ModelRoots.default_for(_config())
    with pytest.raises(PermissionDenied, match="--model-root"):
        roots.check("m", Path("/anything"))
