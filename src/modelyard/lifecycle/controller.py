"""The controller: converges the loaded model versions toward the aspired ones.

It is the only writer of the ``ModelRegistry`` and of the ``Placement``. The repository source
(polling) and the management API only *ask*: ``converge``, ``reconfigure``, ``move``,
``replan``, ``set_label``. What to do next for a model is ``policy.next_action``'s answer (pure);
where a version loads is the planner's (``Placement``); how it loads is the ``Loader``'s.

Invariants, each one a thing users notice:

- A new version is AVAILABLE before an old one leaves routing (availability swap), and an old
  version's in-flight requests finish before it is closed (drain): a swap fails no request.
- A version that fails to load is FAILED with the reason and never replaces a good one.
- A change that does not fit raises ``DoesNotFit`` before anything loads or unloads; nothing
  serving is ever evicted to make room (except the model's own old version under
  ``swap: resource``, which is its owner's choice).
- A version's failure is that version's: any exception while sizing, reading or loading it
  (of any type, from any backend) makes that version FAILED with the reason; converging one
  model never stops because another failed, and no management call fails because some
  version somewhere is broken.
- A version found while serving is loaded once its files have settled; a FAILED version is
  loaded again when its files change and settle (``arrivals``, ``repository.settle``).

Async safety: one event loop. Changes are serialised by one lock (one change at a time), so
loads of one change run concurrently but two changes never interleave. Sizing and file scans
run on threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping

from modelyard.backends import detect_platform
from modelyard.config.schema import ModelConfig, ServerConfig
from modelyard.devices import DeviceTarget
from modelyard.errors import DoesNotFit, FailedPrecondition, ModelyardError, NotFound
from modelyard.ids import VersionKey
from modelyard.lifecycle.arrivals import Arrivals
from modelyard.lifecycle.loading import (
    InProcessLoader,
    Loader,
    LoadRequest,
    ReleasesDevices,
    ServableWrapper,
    declared_signature,
)
from modelyard.lifecycle.placement import DemandOf, Move, Placement
from modelyard.lifecycle.policy import (
    Forget,
    Load,
    ModelSnapshot,
    Refuse,
    Unload,
    next_action,
    when_full,
)
from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
from modelyard.lifecycle.servable import Servable
from modelyard.lifecycle.states import ALLOWED_TRANSITIONS, ModelState
from modelyard.planner import Device, Plan
from modelyard.repository import (
    aspired_versions,
    check_labels,
    scan_versions,
    version_dir,
    version_folders,
)
from modelyard.repository.settle import DEFAULT_SETTLE_S

__all__ = ["Controller", "InProcessLoader", "LoadRequest", "Loader", "declared_signature"]

log = logging.getLogger(__name__)

_MAX_STEPS = 64
"""Steps per model per converge: a policy bug must not spin the loop forever."""


class Controller:
    """Loads the aspired versions of every model, swaps and moves them, unloads them at stop.

    ``plan``: the start-up plan; with it every change is planned (``Placement``). Without it,
    every version loads on ``default_device``. A device loads onto its plan device's
    ``target``; ``device_targets`` adds to or overrides that map (a name neither maps must
    itself be a target's text, ``cpu`` or ``cuda:N``). Versions the start-up plan could not
    place are FAILED with ``unplaced_reason``, those it could not size (``plan.unreadable``)
    with their own reason.
    ``settle_s``: how long a version found while serving must keep its files unchanged
    before it is loaded (``repository.settle``).
    """

    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        loader: Loader,
        *,
        device_targets: Mapping[str, DeviceTarget] | None = None,
        default_device: str = "cpu",
        unplaced_reason: str = "",
        wrap: ServableWrapper | None = None,
        plan: Plan | None = None,
        demand: DemandOf | None = None,
        drain_timeout_s: float = 30.0,
        settle_s: float = DEFAULT_SETTLE_S,
    ) -> None:
        self._config = config
        self._registry = registry
        self._loader = loader
        self._placement = Placement(plan, default_device=default_device, demand=demand)
        planned = {u.device.name: u.device.target for u in plan.devices} if plan else {}
        self._targets: dict[str, DeviceTarget] = {**planned, **(device_targets or {})}
        self._unplaced_reason = unplaced_reason
        self._wrap = wrap
        self._drain_s = drain_timeout_s
        self._entries: dict[VersionKey, VersionEntry] = {}
        # Replicas out of service while their worker restarts, by (version, device name).
        self._parked: dict[tuple[VersionKey, str], Replica] = {}
        self._fallback: dict[str, int] = {}
        # Replicas a load in progress has acquired, released if the load fails part way.
        self._partial: dict[VersionKey, list[Replica]] = {}
        self._lock = asyncio.Lock()
        self._started = False
        self._unreadable = {u.key: u.reason for u in plan.unreadable} if plan else {}
        self._arrivals = Arrivals(settle_s, lambda name: self.converge([name]))
        # Versions FAILED because their node was lost and they fitted nowhere else.
        self._lost: set[VersionKey] = set()

    # -- views -------------------------------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        """The models being served now (the config plus what the management API changed)."""
        return self._config

    @property
    def plan(self) -> Plan | None:
        """The plan of what is placed now."""
        return self._placement.plan

    def devices_of(self, key: VersionKey) -> tuple[str, ...]:
        return self._placement.devices_of(key)

    def model(self, name: str) -> ModelConfig:
        for model in self._config.models:
            if model.name == name:
                return model
        known = ", ".join(m.name for m in self._config.models) or "none"
        raise NotFound(f"model {name!r} is not served; models: {known}")

    def desired(self) -> list[tuple[ModelConfig, int]]:
        """(model, version) pairs the config aspires to, checked (labels, base paths)."""
        pairs: list[tuple[ModelConfig, int]] = []
        for model in self._config.models:
            versions = aspired_versions(scan_versions(model.base_path), model.version_policy)
            check_labels(model.name, model.version_labels, versions)
            pairs.extend((model, v) for v in versions)
        return pairs

    # -- start and converge ------------------------------------------------------------------

    async def start(self) -> None:
        """Register every desired version and load them all concurrently."""
        async with self._lock:
            desired = self.desired()
            for model in self._config.models:
                # A model with no version folder yet is known, so requests get a clear answer.
                self._registry.ensure_model(model.name)
                self._registry.set_labels(model.name, dict(model.version_labels))
            loads = []
            for model, version in desired:
                entry = self._register(VersionKey(model.name, version), model)
                await self._arrivals.tried(entry.key, version_dir(model.base_path, version))
                if self._placement.planned:
                    devices = self._placement.devices_of(entry.key)
                else:
                    devices = self._placement.add(model, version)
                if not devices:
                    if entry.key in self._unreadable:
                        self._fail(entry, self._unreadable[entry.key])
                        continue
                    reason = self._unplaced_reason or "the plan has no device for it"
                    self._fail(entry, f"not loaded: {reason}")
                    continue
                loads.append(self._load(model, entry, devices))
            await asyncio.gather(*loads)
            self._started = True

    async def converge(self, names: list[str] | None = None) -> None:
        """Look at the base paths again and take every model (or ``names``) to its aspired
        versions: load new ones, swap, unload old ones (``policy`` says the steps)."""
        async with self._lock:
            await self._converge(names)

    async def _converge(
        self, names: list[str] | None = None, fresh: frozenset[str] = frozenset()
    ) -> None:
        """Converge every model (or ``names``), each on its own: one model's failure is logged
        and the others go on. Models in ``fresh`` (just added) load their versions as they are
        on disk; the others wait for new versions' files to settle."""
        models = [m for m in self._config.models if names is None or m.name in names]
        await asyncio.gather(*(self._converge_model(m, m.name not in fresh) for m in models))

    async def _converge_model(self, model: ModelConfig, settle: bool) -> None:
        try:
            await self._converge_steps(model, settle)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: contained to this model, so other models still converge
            log.exception("model %s: converging failed; other models are not affected", model.name)

    async def _converge_steps(self, model: ModelConfig, settle: bool) -> None:
        try:
            folders = await asyncio.to_thread(version_folders, model.base_path)
        except ModelyardError as exc:
            # A base path that vanished (an unmounted volume) is not an order to unload.
            log.warning("model %s: %s; keeping what is loaded", model.name, exc.message)
            return
        states = {k.version: e.state for k, e in self._entries.items() if k.model == model.name}
        found, retry = await self._arrivals.loadable(model, folders, states, settle=settle)
        for version in retry:  # forgotten, then loaded afresh below as a new version
            self._forget(VersionKey(model.name, version))
        aspired = frozenset(aspired_versions(found, model.version_policy))
        for _ in range(_MAX_STEPS):
            snapshot = self._snapshot(model, aspired)
            action = next_action(snapshot)
            if action is None:
                return
            if isinstance(action, Load):
                instead = await self._try_load(model, action.version, snapshot)
                if isinstance(instead, Refuse):
                    return  # waits for room; tried again on the next converge
                if instead is None:
                    continue  # loaded (or FAILED): look again
                action = instead
            if isinstance(action, Unload):
                if action.make_room_for is not None:
                    self._fallback[model.name] = action.version
                await self._unload(self._entries[VersionKey(model.name, action.version)])
            elif isinstance(action, Forget):
                self._forget(VersionKey(model.name, action.version))
        log.error("model %s did not converge in %d steps", model.name, _MAX_STEPS)

    def _snapshot(self, model: ModelConfig, aspired: frozenset[int]) -> ModelSnapshot:
        states = {k.version: e.state for k, e in self._entries.items() if k.model == model.name}
        if any(states.get(v) is ModelState.AVAILABLE for v in aspired):
            self._fallback.pop(model.name, None)  # the swap succeeded: nothing to fall back to
        return ModelSnapshot(
            model.name, aspired, states, model.swap, self._fallback.get(model.name)
        )

    async def _try_load(
        self, model: ModelConfig, version: int, snapshot: ModelSnapshot
    ) -> Unload | Refuse | None:
        """Plan and load ``version``; what to do instead when it does not fit."""
        key = VersionKey(model.name, version)
        if self._fallback.get(model.name) == version:
            del self._fallback[model.name]  # one try: a failing fallback must not loop
        entry = self._entries.get(key) or self._register(key, model)
        await self._arrivals.tried(key, version_dir(model.base_path, version))
        try:
            demand = None
            if self._placement.needs_demand(key):  # sizing reads files: off the loop
                demand = await asyncio.to_thread(self._placement.demand, model, version)
            devices = self._placement.add(model, version, demand)
        except DoesNotFit as exc:
            step = when_full(snapshot, version, exc.message)
            if isinstance(step, Refuse) and entry.error != step.reason:
                entry.error = step.reason  # still START: tried again on every converge
                log.warning("model %s: %s", key, step.reason)
            return step
        except Exception as exc:  # cannot be sized: a corrupt or unreadable artifact
            self._fail(entry, _reason(exc))
            return None
        if not devices:
            self._fail(entry, "not loaded: no device for it")
            return None
        await self._load(model, entry, devices)
        return None

    def _fail(self, entry: VersionEntry, reason: str) -> None:
        """FAILED with ``reason``, from START (never tried) or LOADING."""
        if entry.state is ModelState.START:
            entry.transition(ModelState.LOADING)
        if entry.state is ModelState.LOADING:
            entry.transition(ModelState.FAILED, reason)
            log.error("model %s FAILED: %s", entry.key, reason)

    def _register(self, key: VersionKey, model: ModelConfig) -> VersionEntry:
        entry = VersionEntry(key, model.platform)
        self._registry.ensure_model(key.model)
        self._registry.add(entry)
        self._entries[key] = entry
        return entry

    # -- loading and unloading ---------------------------------------------------------------

    async def _load(
        self, model: ModelConfig, entry: VersionEntry, devices: tuple[str, ...]
    ) -> None:
        entry.transition(ModelState.LOADING)
        try:
            entry.platform = detect_platform(
                version_dir(model.base_path, entry.key.version), model.platform
            )
            replicas = [await self._load_replica(model, entry, d) for d in devices]
        except Exception as exc:
            if not isinstance(exc, ModelyardError):  # a backend failing in a way not foreseen
                log.exception("model %s failed to load", entry.key)
            await self._close_all(entry.key, list(self._partial.pop(entry.key, [])))
            self._placement.remove(entry.key)
            self._fail(entry, _reason(exc))
            return
        self._partial.pop(entry.key, None)
        entry.signature = replicas[0].servable.signature
        entry.replicas = replicas
        entry.transition(ModelState.AVAILABLE)
        log.info("model %s AVAILABLE on %s", entry.key, ", ".join(devices))

    async def _load_replica(self, model: ModelConfig, entry: VersionEntry, device: str) -> Replica:
        """Load one replica; a failure part way leaves what was acquired in ``_partial`` so the
        caller releases it instead of leaking it on its device."""
        request = LoadRequest(
            entry.key,
            version_dir(model.base_path, entry.key.version),
            entry.platform,
            self._targets.get(device) or DeviceTarget.parse(device),
            declared_signature(model),
            model,
            device,
        )
        servable: Servable = await self._loader.load(request)
        acquired = self._partial.setdefault(entry.key, [])
        acquired.append(Replica(servable, device))
        if self._wrap is not None:
            servable = self._wrap(servable, model)
            acquired[-1] = Replica(servable, device)
        return acquired[-1]

    async def _unload(self, entry: VersionEntry) -> None:
        """Take ``entry`` out of routing, let its requests finish, close it, forget it."""
        if entry.state is ModelState.AVAILABLE:
            entry.transition(ModelState.UNLOADING)
            replicas, entry.replicas = entry.replicas, []
            await self._drain(entry.key, replicas)
            await self._close_all(entry.key, replicas)
            entry.transition(ModelState.END)
            log.info("model %s unloaded", entry.key)
        self._forget(entry.key)

    async def _drain(self, key: VersionKey, replicas: list[Replica]) -> None:
        """Wait until no request is in flight on ``replicas`` (bounded by the drain timeout)."""
        deadline = time.monotonic() + self._drain_s
        while any(r.in_flight for r in replicas):
            if time.monotonic() > deadline:
                log.warning("%s: %d requests still in flight after %.0f s; closing anyway",
                            key, sum(r.in_flight for r in replicas), self._drain_s)  # fmt: skip
                return
            await asyncio.sleep(0.005)

    async def _close_all(self, key: VersionKey, replicas: list[Replica]) -> None:
        """Close replicas; a failure to close is logged, not raised. Tells the loader."""
        for replica in replicas:
            try:
                await replica.servable.close()
            except Exception:
                log.exception("unloading %s from %s failed", key, replica.device)
            if isinstance(self._loader, ReleasesDevices):
                await self._loader.released(replica.device)

    def _forget(self, key: VersionKey) -> None:
        self._arrivals.forget(key)
        entry = self._entries.pop(key, None)
        if entry is not None and ModelState.END in ALLOWED_TRANSITIONS[entry.state]:
            entry.transition(ModelState.END, entry.error)
        self._registry.remove(key)
        self._placement.remove(key)

    # -- run-time changes (the management API and config reloads) -----------------------------

    async def reconfigure(
        self,
        config: ServerConfig,
        device_targets: Mapping[str, DeviceTarget] | None = None,
    ) -> None:
        """Serve ``config``: load the models it adds, apply the changed settings (version
        policy, labels, swap) of the others, then unload the models it drops.

        The added models' versions are planned first: DoesNotFit (nothing changed) when they
        do not fit, ConfigError for missing base paths or labels. Pins, replicas and batching
        of a model already served take effect when it is next loaded.
        """
        async with self._lock:
            self._targets.update(device_targets or {})
            kept = {m.name for m in self._config.models}
            added = [m for m in config.models if m.name not in kept]
            dropped = [n for n in kept if n not in {m.name for m in config.models}]
            await self._reserve(added)
            self._config = config
            for model in config.models:
                self._registry.ensure_model(model.name)
                self._registry.set_labels(model.name, dict(model.version_labels))
            fresh = frozenset(m.name for m in added)
            await self._converge([m.name for m in config.models], fresh)
            for name in dropped:
                await self._drop(name)
            names = ", ".join(m.name for m in added) or "none"
            log.info("reconfigured: added %s, removed %s", names, ", ".join(dropped) or "none")

    async def _reserve(self, added: list[ModelConfig]) -> None:
        """Plan every version of ``added``, all or nothing. A version that cannot be sized is
        left out here: converging makes it FAILED with its reason, and the rest loads."""
        done: list[VersionKey] = []
        try:
            for model in added:
                versions = aspired_versions(scan_versions(model.base_path), model.version_policy)
                check_labels(model.name, model.version_labels, versions)
                for version in versions:
                    key = VersionKey(model.name, version)
                    demand = None
                    if self._placement.needs_demand(key):
                        try:
                            demand = await asyncio.to_thread(self._placement.demand, model, version)
                        except ModelyardError:
                            continue
                    self._placement.add(model, version, demand)
                    done.append(key)
        except BaseException:
            for key in done:
                self._placement.remove(key)
            raise

    async def _drop(self, name: str) -> None:
        for key in [k for k in self._entries if k.model == name]:
            await self._unload(self._entries[key])
        self._fallback.pop(name, None)
        self._registry.remove_model(name)

    async def move(self, name: str, version: int, source: str, target: str) -> None:
        """Move the replica of ``name:version`` on ``source`` to ``target``: load it there
        first, then drain and unload the one on ``source`` (no request fails).

        DoesNotFit when ``target`` has no room; FailedPrecondition when the version is not
        AVAILABLE or has no replica on ``source`` (or already one on ``target``).
        """
        async with self._lock:
            await self._move(VersionKey(name, version), source, target)

    async def _move(self, key: VersionKey, source: str, target: str) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.state is not ModelState.AVAILABLE:
            state = entry.state.value if entry is not None else "not loaded"
            raise FailedPrecondition(f"model {key.model!r} version {key.version} is {state}")
        on = [r.device for r in entry.replicas]
        if source not in on or target in on:
            raise FailedPrecondition(
                f"{key} has replicas on {', '.join(on)}: it can move from one of them to a "
                f"device it is not on (asked {source} -> {target})"
            )
        after = self._placement.check_move(key, source, target)
        model = self.model(key.model)
        try:
            replica = await self._load_replica(model, entry, target)
        except BaseException:
            await self._close_all(key, self._partial.pop(key, []))
            raise
        self._partial.pop(key, None)
        entry.replicas = [*entry.replicas, replica]  # serving on both for a moment
        old = [r for r in entry.replicas if r.device == source]
        entry.replicas = [r for r in entry.replicas if r.device != source]
        await self._drain(key, old)
        await self._close_all(key, old)
        self._placement.commit_devices(key, after)
        log.info("model %s moved from %s to %s", key, source, target)

    async def replan(self) -> list[Move]:
        """Plan everything afresh (config pins, fewest moves) and carry the moves out, each one
        load-first; then retry versions waiting for room. Returns the moves made."""
        async with self._lock:
            pins = {m.name: m.devices for m in self._config.models}
            plan = self._placement.replan(pins)
            moves: list[Move] = []
            for key, now in self._placement.placed().items():
                wanted = plan.devices_of(key)
                leaving = [d for d in now if d not in wanted]
                arriving = [d for d in wanted if d not in now]
                for source, target in zip(leaving, arriving, strict=False):
                    try:
                        await self._move(key, source, target)
                    except ModelyardError as exc:
                        log.warning("re-plan: %s stays on %s: %s", key, source, exc.message)
                        continue
                    moves.append(Move(key, source, target))
            await self._converge()
            return moves

    async def set_label(self, name: str, label: str, version: int) -> None:
        """Point ``label`` of ``name`` at ``version`` (which must be AVAILABLE)."""
        async with self._lock:
            model = self.model(name)
            entry = self._entries.get(VersionKey(name, version))
            if entry is None or entry.state is not ModelState.AVAILABLE:
                raise FailedPrecondition(
                    f"label {label!r} can only point at an AVAILABLE version; model {name!r} "
                    f"version {version} is {entry.state.value if entry else 'not loaded'}"
                )
            labels = {**model.version_labels, label: version}
            changed = model.model_copy(update={"version_labels": labels})
            models = tuple(changed if m.name == name else m for m in self._config.models)
            self._config = self._config.model_copy(update={"models": models})
            self._registry.set_labels(name, labels)

    async def stop(self) -> None:
        """Unload every version; each replica's ``close`` is awaited."""
        await self._arrivals.close()  # before the lock: a pending look may be waiting for it
        async with self._lock:
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

    # -- told by a cluster's node watcher (``modelyard.cluster.watch``) ----------------------

    async def devices_lost(self, lost: Collection[str], reason: str) -> list[Move]:
        """``lost`` are gone (their node left the cluster): re-plan the versions that had a
        replica there onto the devices left, around everything serving (nothing is evicted),
        and load each where it now goes; a version that does not fit is FAILED with ``reason``
        and the planner's explanation. Returns the moves made."""
        async with self._lock:
            gone = set(lost)
            moved, unplaced = self._placement.lose_devices(gone)
            if unplaced:
                names = ", ".join(str(k) for k in sorted(unplaced))
                why = (f"{reason}; {len(unplaced)} model version(s) do not fit the remaining "
                       f"devices: {names}")  # fmt: skip
                for key in unplaced:
                    entry = self._entries.get(key)
                    if entry is not None:
                        self._leave(entry, gone)
                        self._fail_now(entry, why)
                        self._lost.add(key)
            moves: list[Move] = []
            for key, devices in sorted(moved.items()):
                entry = self._entries.get(key)
                if entry is None:
                    continue
                sources = self._leave(entry, gone)
                have = {r.device for r in entry.replicas}
                if entry.state is ModelState.FAILED:  # its worker gave up on the lost node first
                    entry.transition(ModelState.LOADING, reason)
                try:
                    model = self.model(key.model)
                    for device in devices:
                        if device not in have:
                            added = await self._load_replica(model, entry, device)
                            entry.replicas = [*entry.replicas, added]
                except Exception as exc:
                    await self._close_all(key, self._partial.pop(key, []))
                    self._placement.remove(key)
                    self._fail_now(entry, f"{reason}; reloading elsewhere failed: {_reason(exc)}")
                    continue
                self._partial.pop(key, None)
                if entry.state is ModelState.LOADING and entry.replicas:
                    entry.transition(ModelState.AVAILABLE)
                arrived = [d for d in devices if d not in have]
                moves.extend(Move(key, s, t) for s, t in zip(sources, arrived, strict=False))
                log.info("model %s moved to %s: %s", key, ", ".join(devices), reason)
            return moves

    async def devices_joined(self, devices: Collection[Device]) -> None:
        """``devices`` are back (their node rejoined): plannable again, and the versions
        ``devices_lost`` left FAILED for want of room are tried again (planned like any new
        version: onto whatever device has room). Nothing serving moves."""
        async with self._lock:
            self._placement.join_devices(devices)
            retry = sorted(k for k in self._lost if k in self._entries)
            self._lost.clear()
            for key in retry:
                if self._entries[key].state is ModelState.FAILED:
                    self._forget(key)
            if retry:
                back = ", ".join(d.name for d in devices)
                log.info("devices %s are back: loading %s again", back, ", ".join(map(str, retry)))
                names = sorted({k.model for k in retry})
                await self._converge(names, frozenset(names))

    def _leave(self, entry: VersionEntry, gone: set[str]) -> list[str]:
        """Forget ``entry``'s replicas on ``gone`` (serving or parked); returns those devices."""
        left = sorted({d for (k, d) in self._parked if k == entry.key and d in gone}
                      | {r.device for r in entry.replicas if r.device in gone})  # fmt: skip
        for device in left:
            self._parked.pop((entry.key, device), None)
        entry.replicas = [r for r in entry.replicas if r.device not in gone]
        if not entry.replicas and entry.state is ModelState.AVAILABLE:
            entry.transition(ModelState.LOADING, "its device was lost")
        return left

    def _fail_now(self, entry: VersionEntry, reason: str) -> None:
        if entry.state is ModelState.AVAILABLE and not entry.replicas:
            entry.transition(ModelState.LOADING)
        if entry.state is ModelState.LOADING:
            entry.transition(ModelState.FAILED, reason)
            log.error("model %s FAILED: %s", entry.key, reason)

    # -- told by the worker supervisor (``modelyard.workers.supervisor.ReplicaListener``) --

    def replica_down(self, key: VersionKey, device: str, reason: str) -> None:
        """Take the replica on ``device`` out of rotation; with none left the version is
        LOADING (requests get 503 with ``reason``) until ``replica_up``."""
        entry = self._entries.get(key)
        if entry is None:
            return
        for replica in entry.replicas:
            if replica.device == device:
                self._parked[(key, device)] = replica
        entry.replicas = [r for r in entry.replicas if r.device != device]
        if not entry.replicas and entry.state is ModelState.AVAILABLE:
            entry.transition(ModelState.LOADING, f"reloading: {reason}")

    def replica_up(self, key: VersionKey, device: str) -> None:
        """Put a parked replica back in rotation (its worker reloaded it)."""
        entry = self._entries.get(key)
        replica = self._parked.pop((key, device), None)
        if entry is None or replica is None:
            return
        entry.replicas = [*entry.replicas, replica]
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


def _reason(exc: BaseException) -> str:
    """What a user is told about a failure: our message, else the foreign exception named."""
    if isinstance(exc, ModelyardError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
