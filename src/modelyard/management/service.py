"""The management service: each operator change goes through the controller (and so the
planner), then is written durably, then answered.

Ordering contract: a change is checked first (a model added through the API must live under
the model roots, ``ModelRoots``), then applied (a change that does not fit raises ``DoesNotFit``
and nothing changes, nothing is written); once applied, the new desired state is saved with
``StateStore.save`` (fsync + atomic rename) *before* the call returns, so an acknowledged change
survives a crash of the server. Calls are serialised (one lock), so the state file always
matches the order in which changes were answered.

Async safety: one event loop; the state file is written on a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelyard.config.schema import ServerConfig
from modelyard.errors import AlreadyExists, FailedPrecondition, NotFound
from modelyard.ids import VersionKey
from modelyard.lifecycle.controller import Controller
from modelyard.lifecycle.placement import Move
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.management.index import IndexRow, IndexState
from modelyard.management.roots import ModelRoots
from modelyard.management.state import (
    ManagementState,
    StateStore,
    apply_overrides,
    basis_of,
    model_from_json,
    replace_override,
)


class Management:
    """Load, unload, move, re-plan, labels; and the config file's reloads, which must respect
    the overrides. ``file_config`` is the config as the file says (without overrides);
    ``roots`` are where models added through the API may be read from (default: the folders
    holding ``file_config``'s models, see ``ModelRoots.default_for``)."""

    def __init__(
        self,
        controller: Controller,
        registry: ModelRegistry,
        *,
        file_config: ServerConfig,
        store: StateStore | None = None,
        state: ManagementState | None = None,
        roots: ModelRoots | None = None,
    ) -> None:
        self._controller = controller
        self._registry = registry
        self._file = file_config
        self._store = store
        self._state = state if state is not None else ManagementState()
        self._lock = asyncio.Lock()
        self.roots = roots if roots is not None else ModelRoots.default_for(file_config)

    @property
    def state(self) -> ManagementState:
        return self._state

    # -- reads -------------------------------------------------------------------------------

    def index(self) -> list[IndexRow]:
        """Triton's repository index: one row per version (state, reason, devices), and a row
        for each known model that is not loaded (``modelyard.management.index``)."""
        rows: list[IndexRow] = []
        served = {m.name for m in self._controller.config.models}
        for name in sorted(served | {m.name for m in self._file.models} | set(self._state.models)):
            if name not in served:
                rows.append(IndexRow(name, IndexState.UNAVAILABLE, "unloaded"))
                continue
            entries = self._registry.versions(name) if name in self._registry.model_names() else []
            if not entries:
                rows.append(IndexRow(name, IndexState.UNAVAILABLE, "no version found"))
            for e in entries:
                devices = self._controller.devices_of(e.key)
                rows.append(IndexRow(name, IndexState.of(e.state), e.error, e.key.version, devices))
        return rows

    # -- changes -----------------------------------------------------------------------------

    async def load(self, name: str, entry: dict[str, Any] | None = None) -> list[IndexRow]:
        """Load ``name``: a model of the config file (again), or a new one from ``entry`` (a
        modelyard model entry, absolute base_path under the model roots). A served model is
        re-scanned for versions.

        Raises PermissionDenied (nothing changed) for a base_path outside the roots, DoesNotFit
        (nothing changed) when it does not fit, and FailedPrecondition with each version's
        reason when every version failed to load: then the load is undone and not saved, so
        it does not come back after a restart (a model that has no version yet is not a
        failure: it is saved and loads when a version appears)."""
        async with self._lock:
            served = {m.name for m in self._controller.config.models}
            in_file = next((m for m in self._file.models if m.name == name), None)
            if name in served:
                if entry is not None:
                    raise AlreadyExists(
                        f"model {name!r} is served; unload it before loading it with a new config"
                    )
                await self._controller.converge([name])
                return self._loaded(name)
            if entry is not None and in_file is not None:
                raise AlreadyExists(f"model {name!r} is in the config file; load it by name")
            if entry is None and in_file is None:
                raise NotFound(
                    f"model {name!r} is not in the config; pass its modelyard model entry "
                    'as {"parameters": {"config": "{...}"}} to add it'
                )
            model = in_file if in_file is not None else model_from_json(name, entry or {})
            if in_file is None:
                self.roots.check(name, model.base_path)
            before = self._controller.config
            await self._controller.reconfigure(
                before.model_copy(update={"models": (*before.models, model)})
            )
            try:
                rows = self._loaded(name)
            except FailedPrecondition:
                await self._controller.reconfigure(before)  # undo: it was never acknowledged
                raise
            if in_file is not None:
                state = replace_override(self._state, name, unloaded=False)
            else:
                state = replace_override(self._state, name, added=entry)
            await self._save(state)
            return rows

    def _loaded(self, name: str) -> list[IndexRow]:
        """The index rows of ``name`` after a load; FailedPrecondition when every version
        failed."""
        rows = [r for r in self.index() if r.name == name]
        if rows and all(r.state is IndexState.FAILED for r in rows):
            raise FailedPrecondition(
                f"model {name!r} failed to load: " + "; ".join(r.reason for r in rows)
            )
        return rows

    async def unload(self, name: str) -> None:
        """Drain and unload every version of ``name``; it stays unloaded across restarts."""
        async with self._lock:
            current = self._controller.config
            if name not in {m.name for m in current.models}:
                raise NotFound(f"model {name!r} is not loaded")
            models = tuple(m for m in current.models if m.name != name)
            await self._controller.reconfigure(current.model_copy(update={"models": models}))
            in_file = next((m for m in self._file.models if m.name == name), None)
            if in_file is not None:
                state = replace_override(
                    self._state, name, unloaded=True, basis=basis_of(in_file), labels=None,
                    devices=None,
                )  # fmt: skip
            else:
                state = self._state.with_model(name, None)
            await self._save(state)

    async def move(self, name: str, version: int, source: str, target: str) -> None:
        """Move one replica (load on ``target`` first); the model stays there across restarts."""
        async with self._lock:
            await self._controller.move(name, version, source, target)
            devices = sorted({d for k, ds in self._devices(name) for d in ds if k.model == name})
            await self._save(self._override(name, devices=tuple(devices)))

    async def set_label(self, name: str, label: str, version: int) -> None:
        async with self._lock:
            await self._controller.set_label(name, label, version)
            labels = dict(self._controller.model(name).version_labels)
            await self._save(self._override(name, labels=labels))

    async def replan(self) -> list[Move]:
        """Re-plan and move (load-first); not saved: the next start plans afresh anyway."""
        async with self._lock:
            return await self._controller.replan()

    async def reload_config(self, config: ServerConfig) -> None:
        """Serve ``config`` as the new model config (TF Serving's HandleReloadConfigRequest).

        A base path that no served or configured model has must be under the model roots:
        PermissionDenied otherwise, before anything changes."""
        known = {
            _resolved(m.base_path) for m in (*self._controller.config.models, *self._file.models)
        } - {None}
        for model in config.models:
            if _resolved(model.base_path) not in known:
                self.roots.check(model.name, model.base_path)
        await self.reload_file(lambda: config)

    async def reload_file(self, read: Callable[[], ServerConfig]) -> None:
        """The config file changed: serve it with the overrides that still apply."""
        async with self._lock:
            file_config = await asyncio.to_thread(read)
            desired, kept = apply_overrides(file_config, self._state, self.roots)
            await self._controller.reconfigure(desired)
            self._file = file_config
            if kept != self._state:
                await self._save(kept)

    # -- internals ---------------------------------------------------------------------------

    def _devices(self, name: str) -> list[tuple[VersionKey, tuple[str, ...]]]:
        keys = [e.key for e in self._registry.versions(name)]
        return [(k, self._controller.devices_of(k)) for k in keys]

    def _override(self, name: str, **changes: Any) -> ManagementState:
        in_file = next((m for m in self._file.models if m.name == name), None)
        return replace_override(self._state, name, basis=basis_of(in_file), **changes)

    async def _save(self, state: ManagementState) -> None:
        if self._store is not None:
            await asyncio.to_thread(self._store.save, state)
        self._state = state


def _resolved(path: Path) -> Path | None:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop matches nothing
        return None
