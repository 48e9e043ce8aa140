"""The durable record of management operations, and how it combines with the config file.

Desired state = the config file + these overrides. One JSON document (never pickle)::

    {"format": 1,
     "models": {"m": {"basis": "<sha256 of m's entry in the config file, or empty>",
                      "added": {<a modelyard model entry>} | null,
                      "unloaded": false,
                      "labels": {"stable": 2} | null,
                      "devices": ["sim2"] | null}}}

Precedence (docs/lifecycle.md): an override wins over the config file entry it was made
against; when the file's entry for that model changes afterwards (``basis`` no longer matches),
the newer intent wins: the file, and the override is dropped. A model ``added`` through the
API is served until it is unloaded through the API, or until the config file gains a model of
the same name (the file wins).

Durability: ``StateStore.save`` writes a temporary file, fsyncs it, renames it over the
state file and fsyncs the folder, so after a crash the file is either the old or the new
document, never a mix. It is called before a management call is answered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelyard.config.schema import ModelConfig, ServerConfig
from modelyard.errors import ConfigError, PermissionDenied
from modelyard.management.roots import ModelRoots

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True, slots=True)
class ModelOverride:
    """What the management API changed about one model."""

    basis: str = ""
    added: dict[str, Any] | None = None
    unloaded: bool = False
    labels: dict[str, int] | None = None
    devices: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "added": self.added,
            "unloaded": self.unloaded,
            "labels": self.labels,
            "devices": list(self.devices) if self.devices is not None else None,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> ModelOverride:
        devices = data.get("devices")
        return ModelOverride(
            basis=str(data.get("basis", "")),
            added=data.get("added"),
            unloaded=bool(data.get("unloaded", False)),
            labels={str(k): int(v) for k, v in data["labels"].items()}
            if data.get("labels") is not None
            else None,
            devices=tuple(devices) if devices is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ManagementState:
    models: dict[str, ModelOverride] = field(default_factory=dict)

    def with_model(self, name: str, override: ModelOverride | None) -> ManagementState:
        models = dict(self.models)
        if override is None or override == ModelOverride(basis=override.basis):
            models.pop(name, None)  # nothing left to override
        else:
            models[name] = override
        return ManagementState(models)

    def to_json(self) -> dict[str, Any]:
        models = {n: o.to_json() for n, o in sorted(self.models.items())}
        return {"format": FORMAT, "models": models}


def basis_of(model: ModelConfig | None) -> str:
    """The fingerprint of a config file entry an override was made against."""
    if model is None:
        return ""
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()[:16]


def model_from_json(name: str, entry: dict[str, Any]) -> ModelConfig:
    """A model entry sent through the API (``parameters.config``); base_path must be absolute."""
    try:
        model = ModelConfig.model_validate({**entry, "name": name})
    except ValueError as exc:
        raise ConfigError(f"model {name!r}: invalid config: {exc}") from None
    if not model.base_path.is_absolute():
        raise ConfigError(
            f"model {name!r}: base_path {str(model.base_path)!r} must be absolute in a "
            "management call (the server's working folder is no one's business)"
        )
    return model


def apply_overrides(
    config: ServerConfig, state: ManagementState, roots: ModelRoots | None = None
) -> tuple[ServerConfig, ManagementState]:
    """The desired config (``config`` + overrides) and the overrides still in force.

    A model added through the API whose base_path is outside ``roots`` (when given) is
    dropped, with an error in the log: the operator narrowed the roots since."""
    by_name = {m.name: m for m in config.models}
    kept = ManagementState()
    models: list[ModelConfig] = []
    for model in config.models:
        override = state.models.get(model.name)
        if override is not None and override.basis != basis_of(model):
            log.warning("model %s changed in the config file since it was changed through the "
                        "management API; the config file wins", model.name)  # fmt: skip
            override = None
        if override is None:
            models.append(model)
            continue
        kept = kept.with_model(model.name, override)
        if not override.unloaded:
            models.append(_overridden(model, override))
    for name, override in state.models.items():
        if name in by_name or override.added is None or override.unloaded:
            continue
        try:
            added = model_from_json(name, override.added)
            if roots is not None:
                roots.check(name, added.base_path)
        except (ConfigError, PermissionDenied) as exc:
            log.error("dropping model %s added through the management API: %s", name, exc)
            continue
        models.append(_overridden(added, override))
        kept = kept.with_model(name, override)
    return config.model_copy(update={"models": tuple(models)}), kept


def _overridden(model: ModelConfig, override: ModelOverride) -> ModelConfig:
    update: dict[str, Any] = {}
    if override.labels is not None:
        update["version_labels"] = dict(override.labels)
    if override.devices is not None:
        update["devices"] = override.devices
    return model.model_copy(update=update) if update else model


class StateStore:
    """The state file of one deployment. Not thread-safe: one writer (the management service)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def default_path(identity: str) -> Path:
        """``$MODELYARD_CACHE_DIR/state/<id>/state.json`` (else under ``~/.cache/modelyard``);
        ``identity`` names the deployment (the config file's absolute path)."""
        root = os.environ.get("MODELYARD_CACHE_DIR")
        base = Path(root) if root else Path.home() / ".cache" / "modelyard"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return base / "state" / digest / "state.json"

    def load(self) -> ManagementState:
        """The saved state; empty when there is none. ConfigError for a file that is not ours."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return ManagementState()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the management state {self.path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{self.path} is not a modelyard management state (format {FORMAT})")
        models = {str(n): ModelOverride.from_json(o) for n, o in data.get("models", {}).items()}
        return ManagementState(models)

    def save(self, state: ManagementState) -> None:
        """Write ``state`` durably (see the module doc); returns once it is on disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself must survive a crash
        finally:
            os.close(fd)


def replace_override(state: ManagementState, name: str, **changes: Any) -> ManagementState:
    current = state.models.get(name, ModelOverride())
    return state.with_model(name, replace(current, **changes))
