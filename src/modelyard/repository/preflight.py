"""The checks ``serve`` makes on a config's models before it loads anything, as one function.

``modelyard plan`` and ``modelyard serve`` both call ``preflight`` (through
``modelyard.cli.sources``), so a config that ``serve`` would refuse is refused by ``plan`` with
the same message and exit status. It reads folders only (never a model file): a version whose
artifact cannot be read is not a config error but that version's fault, found by the planner's
sizing (``Plan.unreadable``) and FAILED by ``serve``.

Problems (``ConfigError``, every one found, each naming the file, the model and the fix):

- ``base_path`` is a file, or not there (for ``plan`` only, a missing one with ``memory:`` is
  a placeholder for a model not on disk yet, which the planner notes; ``serve`` needs it);
- a version label points at a version that is not served (TF Serving refuses this too).

Warnings (returned, shown by ``plan`` and logged by ``serve``): folders that hold a model
file but are not versions, because their names are not numbers (``v1/``, ``latest/``); they
are ignored, as TF Serving ignores them, and without the warning nobody would know why.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelyard.config.schema import ModelConfig, Platform, ServerConfig
from modelyard.errors import ConfigError
from modelyard.repository.versions import (
    aspired_versions,
    check_labels,
    scan_versions,
    version_folders,
)

_ARTIFACT_NAMES = frozenset(p.artifact for p in Platform if p is not Platform.AUTO)


def preflight(
    config: ServerConfig, *, source: str | None = None, placeholders: bool = False
) -> tuple[str, ...]:
    """Check every model of ``config`` as ``serve`` would before loading; the warnings.

    ``source`` (the config file, or a flag) starts every message. ``placeholders`` (``plan``):
    a missing base path with ``memory:`` is a warning, not a problem. Raises ConfigError
    listing every problem found. Reads folders only.
    """
    prefix = f"{source}: " if source else ""
    problems: list[str] = []
    warnings: list[str] = []
    for model in config.models:
        problem = base_path_problem(model.base_path)
        if problem is not None:
            to_come = model.memory_bytes is not None and not model.base_path.exists()
            if not (placeholders and to_come):  # the planner notes placeholders itself
                problems.append(f"{prefix}model {model.name!r}: {problem}")
            continue
        warnings.extend(f"{prefix}{w}" for w in _misnamed_versions(model))
        try:
            served = aspired_versions(scan_versions(model.base_path), model.version_policy)
            check_labels(model.name, model.version_labels, served)
        except ConfigError as exc:
            problems.append(f"{prefix}{exc.message}")
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(warnings)


def base_path_problem(base_path: Path, what: str = "base_path") -> str | None:
    """What is wrong with ``base_path`` as a model's folder of versions; None when nothing.
    ``what`` names it (the key, or the flag that gave it)."""
    if base_path.is_dir():
        return None
    if base_path.exists():
        hint = ""
        if base_path.name in _ARTIFACT_NAMES and base_path.parent.parent != base_path.parent:
            hint = f" (for this file, base_path is {base_path.parent.parent})"
        return (
            f"{what} {base_path} is a file, not a folder; {what} is the folder that "
            f"holds the version folders 1/, 2/, ...{hint}"
        )
    return (
        f"{what} {base_path} does not exist; give the folder that holds the version "
        "folders 1/, 2/, ... (each with one model file)"
    )


def _misnamed_versions(model: ModelConfig) -> list[str]:
    """A warning for folders under the base path that hold a model file but are not versions."""
    versions = {p.name for p in version_folders(model.base_path).values()}
    misnamed: list[str] = []
    try:
        entries = sorted(os.scandir(model.base_path), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if entry.name in versions or entry.name.startswith("."):
            continue
        try:
            if entry.is_dir() and any((Path(entry.path) / a).exists() for a in _ARTIFACT_NAMES):
                misnamed.append(entry.name + "/")
        except OSError:
            continue
    if not misnamed:
        return []
    return [
        f"model {model.name!r}: {', '.join(misnamed)} under {model.base_path} hold a model but "
        "are not versions and are ignored: version folders are named by positive numbers "
        "(1/, 2/, ...); rename them, e.g. to 1/"
    ]
