"""The controller: turns the config's desired state into loaded, registered model versions.

It is the only writer of the ``ModelRegistry``. Where a version loads is the ``Placer``'s
answer (the planner's plan); how it loads is the ``Loader``'s (in this process, or in a
per-device worker). Loads of different versions run concurrently; a version that fails to load
is marked FAILED with the reason and never blocks or replaces the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelyard.backends import detect_platform, get_backend
from modelyard.config.schema import ModelConfig, Platform, ServerConfig
from modelyard.errors import ModelyardError
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
from modelyard.lifecycle.servable import LocalServable, Servable
from modelyard.lifecycle.states import ModelState
from modelyard.repository import aspired_versions, check_labels, scan_versions
from modelyard.tensors import Signature

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Everything a loader needs to load one replica of one version on one device."""

    key: VersionKey
    version_dir: Path
    platform: Platform
    device: str
    declared: Signature | None
    config: ModelConfig
    device_name: str = ""
    """The plan's name for the device (``sim0``, ``gpu1``): one worker process per name, even
    when two names share a backend target (two CPU devices are both ``cpu``)."""


class Loader(Protocol):
    """Loads a model version somewhere and hands back a ``Servable`` for it."""

    async def load(self, request: LoadRequest) -> Servable: ...


ServableWrapper = Callable[[Servable, ModelConfig], Servable]
"""Wraps a loaded servable, e.g. in a dynamic batcher; identity when not configured."""


class InProcessLoader:
    """Loads models into this process: one thread pool for loads, one for inference."""

    def __init__(self, inference_threads: int = 4) -> None:
        self._load_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="load")
        self._infer_pool = ThreadPoolExecutor(
            max_workers=inference_threads, thread_name_prefix="infer"
        )

    async def load(self, request: LoadRequest) -> Servable:
        backend = get_backend(request.platform)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(
            self._load_pool, backend.load, request.version_dir, request.device, request.declared
        )
        return LocalServable(model, self._infer_pool)

    def shutdown(self) -> None:
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)


def declared_signature(config: ModelConfig) -> Signature | None:
    if config.inputs is None or config.outputs is None:
        return None
    return Signature(
        inputs=tuple(t.spec() for t in config.inputs),
        outputs=tuple(t.spec() for t in config.outputs),
    )


class Controller:
    """Loads the desired versions of every configured model and unloads them at stop.

    ``placement`` maps each version to the names of the devices its replicas load on (the
    plan's device names: ``gpu0``, ``sim1``, ``cpu``); ``device_targets`` maps a device name
    to what a backend loads onto (``cuda:0``, ``cpu``). Without a placement every version loads
    on ``default_device``. With one, a version it leaves out is not loaded: it is marked FAILED
    with ``unplaced_reason`` (the planner's explanation).
    """

    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        loader: Loader,
        *,
        placement: Mapping[VersionKey, tuple[str, ...]] | None = None,
        device_targets: Mapping[str, str] | None = None,
        default_device: str = "cpu",
        unplaced_reason: str = "",
        wrap: ServableWrapper | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._loader = loader
        self._placement = dict(placement) if placement is not None else None
        self._targets = dict(device_targets or {})
        self._default_device = default_device
        self._unplaced_reason = unplaced_reason
        self._wrap = wrap
        self._entries: dict[VersionKey, VersionEntry] = {}
        # Replicas out of service while their worker restarts, by (version, device name).
        self._parked: dict[tuple[VersionKey, str], Replica] = {}

    def desired(self) -> list[tuple[ModelConfig, int]]:
        """(model, version) pairs the config aspires to, checked (labels, base paths)."""
        pairs: list[tuple[ModelConfig, int]] = []
        for model in self._config.models:
            versions = aspired_versions(scan_versions(model.base_path), model.version_policy)
            check_labels(model.name, model.version_labels, versions)
            pairs.extend((model, v) for v in versions)
        return pairs

    async def start(self) -> None:
        """Register every desired version and load them all concurrently."""
        desired = self.desired()
        for model in self._config.models:
            # A model with no version folder yet is still known, so requests get a clear answer.
            self._registry.ensure_model(model.name)
        entries = []
        for model, version in desired:
            entry = VersionEntry(VersionKey(model.name, version), model.platform)
            self._registry.add(entry)
            self._entries[entry.key] = entry
            entries.append((model, entry))
        for model in self._config.models:
            self._registry.set_labels(model.name, dict(model.version_labels))
        await asyncio.gather(*(self._load(model, entry) for model, entry in entries))

    async def _load(self, model: ModelConfig, entry: VersionEntry) -> None:
        entry.transition(ModelState.LOADING)
        version_dir = model.base_path / str(entry.key.version)
        if self._placement is None:
            devices: tuple[str, ...] = (self._default_device,)
        else:
            devices = self._placement.get(entry.key, ())
            if not devices:
                reason = self._unplaced_reason or "the plan has no device for it"
                entry.transition(ModelState.FAILED, f"not loaded: {reason}")
                return
        # Everything this load acquires, so a failure part way (the second replica, or the
        # wrapper) releases what the first steps loaded instead of leaking it on its device.
        acquired: list[Servable] = []
        replicas: list[Replica] = []
        try:
            entry.platform = detect_platform(version_dir, model.platform)
            declared = declared_signature(model)
            for device in devices:
                target = self._targets.get(device, device)
                request = LoadRequest(
                    entry.key, version_dir, entry.platform, target, declared, model, device
                )
                servable = await self._loader.load(request)
                acquired.append(servable)
                if self._wrap is not None:
                    servable = self._wrap(servable, model)
                    acquired[-1] = servable
                replicas.append(Replica(servable, device))
        except Exception as exc:
            if isinstance(exc, ModelyardError):
                reason = exc.message
                log.error("model %s failed to load: %s", entry.key, reason)
            else:  # a backend failing in a way it did not foresee
                reason = f"{type(exc).__name__}: {exc}"
                log.exception("model %s failed to load", entry.key)
            await _close_all(entry.key, acquired)
            entry.transition(ModelState.FAILED, reason)
            return
        entry.signature = replicas[0].servable.signature
        entry.replicas = replicas
        entry.transition(ModelState.AVAILABLE)
        log.info("model %s AVAILABLE on %s", entry.key, ", ".join(devices))

    # -- told by the worker supervisor (``modelyard.workers.supervisor.ReplicaListener``) --

    def replica_down(self, key: VersionKey, device: str, reason: str) -> None:
        """Take the replica on ``device`` out of rotation; with none left the version is
        LOADING (requests get 503 with ``reason``) until ``replica_up``."""
        entry = self._entries.get(key)
        if entry is None:
            return
        for replica in list(entry.replicas):
            if replica.device == device:
                entry.replicas.remove(replica)
                self._parked[(key, device)] = replica
        if not entry.replicas and entry.state is ModelState.AVAILABLE:
            entry.transition(ModelState.LOADING, f"reloading: {reason}")

    def replica_up(self, key: VersionKey, device: str) -> None:
        """Put a parked replica back in rotation (its worker reloaded it)."""
        entry = self._entries.get(key)
        replica = self._parked.pop((key, device), None)
        if entry is None or replica is None:
            return
        entry.replicas.append(replica)
        if entry.state is ModelState.LOADING:
            entry.transition(ModelState.AVAILABLE)
            log.info("model %s AVAILABLE again on %s", key, device)

    def replica_failed(self, key: VersionKey, device: str, reason: str) -> None:
        """Drop the replica on ``device`` for good; with none left the version is FAILED."""
        entry = self._entries.get(key)
        self._parked.pop((key, device), None)
        if entry is None:
            return
        entry.replicas = [r for r in entry.replicas if r.device != device]
        if not entry.replicas and entry.state in (ModelState.LOADING, ModelState.AVAILABLE):
            if entry.state is ModelState.AVAILABLE:
                entry.transition(ModelState.LOADING)
            entry.transition(ModelState.FAILED, reason)
            log.error("model %s FAILED: %s", key, reason)

    async def reconfigure(
        self,
        config: ServerConfig,
        placement: Mapping[VersionKey, tuple[str, ...]] | None = None,
        device_targets: Mapping[str, str] | None = None,
    ) -> None:
        """Serve ``config``: load the models it adds, then unload the models it drops.

        Models in both configs keep their loaded versions as they are, so requests to them
        never fail during a reconfigure (a change to their settings takes effect when the
        server restarts). ``placement`` places the added models' versions (the planner's plan
        for ``config`` given the current placement); ``device_targets`` adds device names it
        uses. Config errors of the added models (missing base paths, labels) raise before
        anything changes. Added models that fail to load are FAILED, as at start.
        """
        kept = {m.name for m in self._config.models}
        wanted = {m.name for m in config.models}
        added = [m for m in config.models if m.name not in kept]
        dropped = [name for name in kept if name not in wanted]
        pairs: list[tuple[ModelConfig, int]] = []
        for model in added:
            versions = aspired_versions(scan_versions(model.base_path), model.version_policy)
            check_labels(model.name, model.version_labels, versions)
            pairs.extend((model, v) for v in versions)
        if placement is not None and self._placement is not None:
            self._placement.update(placement)
        self._targets.update(device_targets or {})
        entries = []
        for model in added:
            self._registry.ensure_model(model.name)
            self._registry.set_labels(model.name, dict(model.version_labels))
        for model, version in pairs:
            entry = VersionEntry(VersionKey(model.name, version), model.platform)
            self._registry.add(entry)
            self._entries[entry.key] = entry
            entries.append((model, entry))
        self._config = config
        await asyncio.gather(*(self._load(model, entry) for model, entry in entries))
        for name in dropped:
            for entry in self._registry.versions(name):
                await self._unload(entry)
                self._entries.pop(entry.key, None)
                if self._placement is not None:
                    self._placement.pop(entry.key, None)
            self._registry.remove_model(name)
        log.info(
            "reconfigured: added %s, removed %s",
            ", ".join(m.name for m in added) or "none",
            ", ".join(dropped) or "none",
        )

    async def _unload(self, entry: VersionEntry) -> None:
        if entry.state is not ModelState.AVAILABLE:
            return
        entry.transition(ModelState.UNLOADING)
        for replica in entry.replicas:
            try:
                await replica.servable.close()
            except Exception:
                log.exception("unloading %s failed", entry.key)
        entry.replicas = []
        entry.transition(ModelState.END)

    async def stop(self) -> None:
        """Unload every version; each replica's ``close`` is awaited."""
        for entry in list(self._registry.entries()):
            if entry.state is ModelState.AVAILABLE:
                entry.transition(ModelState.UNLOADING)
                for replica in entry.replicas:
                    try:
                        await replica.servable.close()
                    except Exception:
                        log.exception("unloading %s failed", entry.key)
                entry.replicas = []
                entry.transition(ModelState.END)


async def _close_all(key: VersionKey, servables: list[Servable]) -> None:
    """Close servables a failed load acquired; a failure to close is logged, not raised."""
    for servable in servables:
        try:
            await servable.close()
        except Exception:
            log.exception("releasing a replica of %s after its failed load", key)
