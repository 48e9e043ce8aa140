"""From a ServerConfig to the planner's demands, and ``plan_for_config``: what serve and plan call.

A version's bytes come from, in order: ``memory:`` in config, a footprint measured after an
earlier load of the same artifact (``footprints``), an estimate from the artifact (``estimate``).

Artifacts are not needed when ``memory:`` is given: ``modelyard plan`` is an offline tool, and a
model whose ``base_path`` is missing or holds no version yet is planned as a placeholder that
reserves ``memory:`` for one version, shown as version 0 (``m1:0``), or for each version of a
``specific`` policy. Without ``memory:``, a missing ``base_path`` is a ConfigError and an empty
one is left out with a note (there is nothing to load yet).

A version whose artifact cannot be sized (corrupt, truncated, empty, a folder in the file's
place, unreadable) is a fault of that version, not of the config: it is left out of the
demands and listed in ``Demands.unreadable`` / ``Plan.unreadable`` with the reason, and the
rest is planned as if it were absent. ``serve`` marks it FAILED with that reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from modelyard.config.schema import ModelConfig, ServerConfig
from modelyard.devices import Device
from modelyard.errors import ConfigError, InvalidArgument
from modelyard.ids import VersionKey
from modelyard.planner.estimate import estimate_footprint
from modelyard.planner.footprints import FootprintCache
from modelyard.planner.paging import PagingPlan, paging_hint, plan_paging
from modelyard.planner.place import PlacerOptions, place
from modelyard.planner.plan import FootprintSource, ModelDemand, Plan, UnreadableVersion
from modelyard.repository import aspired_versions, scan_versions, version_dir

PLACEHOLDER_VERSION = 0
"""Version number of a placeholder demand: a model with ``memory:`` but no version on disk."""


@dataclasses.dataclass(frozen=True, slots=True)
class Demands:
    """The demands of a config, and notes about models that were left out or made up."""

    demands: tuple[ModelDemand, ...]
    notes: tuple[str, ...]
    unreadable: tuple[UnreadableVersion, ...] = ()


def demands_for_config(config: ServerConfig, *, cache: FootprintCache | None = None) -> Demands:
    """One demand per aspired version of every model (see the module doc for the rules).

    Raises ConfigError when a model has neither files to estimate from nor ``memory:``.
    """
    demands: list[ModelDemand] = []
    notes: list[str] = []
    unreadable: list[UnreadableVersion] = []
    placeholders_for: list[str] = []
    for model in config.models:
        versions = _aspired(model)
        if not versions:
            if model.memory_bytes is None:
                if not model.base_path.is_dir():
                    raise ConfigError(
                        f"model {model.name!r}: base_path {model.base_path} does not exist and "
                        "memory: is not given; plan needs one of them"
                    )
                notes.append(f"{model.name}: no versions under {model.base_path} yet; not placed")
                continue
            placeholders_for.append(model.name)
            versions = list(model.version_policy.specific or (PLACEHOLDER_VERSION,))
        for version in versions:
            try:
                demands.append(demand_for_version(model, version, cache=cache))
            except InvalidArgument as exc:
                unreadable.append(UnreadableVersion(VersionKey(model.name, version), exc.message))
    if placeholders_for:
        notes.append(
            f"no versions on disk for {len(placeholders_for)} model(s) "
            f"({', '.join(placeholders_for)}): planned with their memory: "
            f"(version {PLACEHOLDER_VERSION} stands for the version to come); serve needs "
            "their base_path folders"
        )
    return Demands(tuple(demands), tuple(notes), tuple(unreadable))


def demand_for_version(
    model: ModelConfig, version: int, *, cache: FootprintCache | None = None
) -> ModelDemand:
    """The demand of one version of ``model``: its bytes (``memory:``, else the footprint
    measured in ``cache``, else the estimate from its artifact), pins and replicas.

    With ``memory:`` the folder need not exist (a placeholder for the version to come).
    Raises InvalidArgument, naming the file, when the artifact cannot be sized or the folder
    is not there. Reads the artifact's headers (disk I/O): call it off the event loop.
    """
    folder = version_dir(model.base_path, version)
    if model.memory_bytes is None and not folder.is_dir():
        raise InvalidArgument(
            f"model {model.name!r} version {version}: no version folder under "
            f"{model.base_path} to size"
        )
    size, source = _footprint(model, folder, cache)
    return ModelDemand(
        key=VersionKey(model.name, version),
        bytes=size,
        pins=model.devices,
        replicas=model.replicas,
        source=source,
    )


def plan_for_config(
    config: ServerConfig,
    devices: Sequence[Device],
    *,
    current: Mapping[VersionKey, Sequence[str]] | None = None,
    cache: FootprintCache | None = None,
    options: PlacerOptions | None = None,
) -> Plan:
    """Build the demands of ``config`` and place them on ``devices``; what ``serve`` runs
    before loading.

    ``devices`` are measured by the caller (``modelyard.devices.inventory.build_inventory(
    config.devices)``): this module never probes the machine.

    Returns the Plan even when infeasible: ``plan.feasible`` says whether every replica fits,
    ``plan.explanation`` why not, and ``plan.raise_if_infeasible()`` raises ResourceExhausted
    with it. ``serve --serve-what-fits`` loads ``plan.placement()`` (the versions that fit).
    Versions that cannot be sized are in ``plan.unreadable`` (not planned; see the module doc).
    Raises ConfigError for models with neither files nor ``memory:``.
    """
    found = demands_for_config(config, cache=cache if cache is not None else FootprintCache())
    plan = place(
        found.demands,
        devices,
        current,
        headroom_fraction=config.headroom_fraction,
        options=options,
    )
    if not plan.feasible and config.paging is None:
        hint = paging_hint(plan, found.demands)
        if hint:
            plan = dataclasses.replace(plan, explanation=f"{plan.explanation}\n{hint}")
    return dataclasses.replace(plan, notes=plan.notes + found.notes, unreadable=found.unreadable)


def plan_paging_for_config(
    config: ServerConfig, devices: Sequence[Device], *, cache: FootprintCache | None = None
) -> PagingPlan:
    """``plan_for_config`` for a config with ``paging:`` (``modelyard.planner.paging``): home
    devices, the resident set, host use and what pages to disk."""
    paging = config.paging
    found = demands_for_config(config, cache=cache if cache is not None else FootprintCache())
    result = plan_paging(
        found.demands,
        devices,
        resident=frozenset(m.name for m in config.models if m.resident),
        host_memory_bytes=paging.host_memory_bytes if paging is not None else 0,
        headroom_fraction=config.headroom_fraction,
    )
    plan = dataclasses.replace(
        result.plan, notes=result.plan.notes + found.notes, unreadable=found.unreadable
    )
    return dataclasses.replace(result, plan=plan)


def _aspired(model: ModelConfig) -> list[int]:
    if not model.base_path.is_dir():
        return []
    return aspired_versions(scan_versions(model.base_path), model.version_policy)


def _footprint(
    model: ModelConfig, version_dir: Path, cache: FootprintCache | None
) -> tuple[int, FootprintSource]:
    if model.memory_bytes is not None:
        return model.memory_bytes, FootprintSource.CONFIG
    if cache is not None:
        try:
            measured = cache.lookup(version_dir)
        except OSError:
            measured = None  # the cache is an optimisation; the estimate says what is wrong
        if measured is not None:
            return measured, FootprintSource.MEASURED
    # InvalidArgument (and nothing else) for an artifact that cannot be sized.
    estimate = estimate_footprint(version_dir, model.platform, batching=model.batching is not None)
    return estimate.total_bytes, FootprintSource.ESTIMATED
