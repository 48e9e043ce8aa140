"""Where a management call may read models from: the model roots (``--model-root DIR``).

A model the management API adds (a ``load`` with a model entry, or a base path that a TF
Serving ``HandleReloadConfigRequest`` introduces) must have a ``base_path`` that resolves
(symlinks followed, ``..`` collapsed) to a folder under one of the roots; otherwise the call is
refused with PermissionDenied (403 / PERMISSION_DENIED) naming the allowed roots, and nothing
changes. Without ``--model-root`` the roots are the model repositories of the configured models:
the parent folder of each model's ``base_path`` in the config the server started with (for
``/models/resnet`` the root is ``/models``). A base path directly under the filesystem root
contributes itself, never ``/``. Models of the config file itself (loaded by name, or kept by
a reload) are the operator's and are not checked. A model added earlier and saved in the
management state is checked again at each start: outside today's roots it is dropped, with an
error in the log.

The check runs when the call is made; the resolved folder is what was checked. Whoever can
write under a root can still place files there: a root is a promise about the operator's
folders, not a sandbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelyard.config.schema import ServerConfig
from modelyard.errors import PermissionDenied


@dataclass(frozen=True, slots=True)
class ModelRoots:
    """The folders management calls may read models from (resolved, absolute)."""

    roots: tuple[Path, ...]

    @staticmethod
    def of(folders: Iterable[Path]) -> ModelRoots:
        """Roots from ``--model-root`` folders (resolved now; duplicates dropped)."""
        resolved: list[Path] = []
        for folder in folders:
            path = Path(folder).expanduser().resolve()
            if path not in resolved:
                resolved.append(path)
        return ModelRoots(tuple(resolved))

    @staticmethod
    def chosen(folders: Iterable[Path] | None, config: ServerConfig) -> ModelRoots:
        """``--model-root`` ``folders`` when given (not empty), else ``default_for(config)``."""
        given = list(folders or ())
        return ModelRoots.of(given) if given else ModelRoots.default_for(config)

    @staticmethod
    def default_for(config: ServerConfig) -> ModelRoots:
        """The default: the folder holding each configured model's ``base_path``."""
        folders = []
        for model in config.models:
            base = Path(model.base_path).expanduser().resolve()
            folders.append(base.parent if base.parent != base.parent.parent else base)
        return ModelRoots.of(folders)

    def allows(self, path: Path) -> bool:
        """Whether ``path`` resolves to a folder under (or equal to) one of the roots."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError):  # a symlink loop: nothing a model can be read from
            return False
        return any(resolved.is_relative_to(root) for root in self.roots)

    def check(self, model: str, path: Path) -> None:
        """Return if ``model`` may be read from ``path``; PermissionDenied otherwise.

        The message names the roots and the path as the caller gave it, never the folder a
        symlink points to."""
        if self.allows(path):
            return
        if not self.roots:
            where = "no model roots are set (the server started with no models)"
        else:
            where = "the model roots are " + ", ".join(str(r) for r in self.roots)
        raise PermissionDenied(
            f"model {model!r}: base_path {str(path)!r} is outside the model roots; {where}. "
            "The operator allows more with --model-root DIR"
        )
