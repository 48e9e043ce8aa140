"""Where every placed model version is, and the planner calls that change it at run time.

``Placement`` is the controller's book of reservations. Every change (a new version, a model
added through the management API, a move, a re-plan) is asked of the planner first; only a
feasible answer is committed, so a change that does not fit raises ``DoesNotFit`` with the
planner's explanation *before* anything loads or unloads. Versions already placed are pinned to
where they are when something is added, so an addition never moves or evicts a serving model.

The devices are the start-up plan's (their ``free_bytes`` were measured before any model
loaded, which is what ``place`` expects of versions it is told are ``current``).

Without a plan (models load in one place, e.g. a controller's unit tests), nothing is checked:
every version goes on the default device.

Not thread-safe; owned by the controller, on its event loop. No I/O except the footprint
estimate of a new version (reads the artifact's headers) when ``add`` is not given the demand:
the controller sizes on a thread (``demand``) and passes it in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping

from modelyard.config.schema import ModelConfig
from modelyard.errors import DoesNotFit
from modelyard.ids import VersionKey
from modelyard.planner import Device, ModelDemand, Plan, place
from modelyard.planner.demands import demand_for_version
from modelyard.planner.footprints import FootprintCache

DemandOf = Callable[[ModelConfig, int], ModelDemand]
"""The planner's demand for one version of one model (bytes from config, cache or estimate)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    """One replica of ``key`` moved from device ``source`` to device ``target`` (a re-plan's
    step, carried out load-first)."""

    key: VersionKey
    source: str
    target: str


def demand_of(cache: FootprintCache | None = None) -> DemandOf:
    """A ``DemandOf`` that sizes a version as ``modelyard plan`` would.

    Raises InvalidArgument (the reason names the file) when the version cannot be sized. Reads
    the artifact's headers (disk I/O, flat memory): call it off the event loop.
    """

    def one(model: ModelConfig, version: int) -> ModelDemand:
        return demand_for_version(model, version, cache=cache)

    return one


class Placement:
    """Reservations per version; see the module doc."""

    def __init__(
        self,
        plan: Plan | None,
        *,
        default_device: str = "cpu",
        headroom_fraction: float = 0.05,
        demand: DemandOf | None = None,
    ) -> None:
        self._plan = plan
        self._default = default_device
        self._headroom = plan.headroom_fraction if plan is not None else headroom_fraction
        self._demand = demand or demand_of()
        self._devices: tuple[Device, ...] = (
            tuple(u.device for u in plan.devices) if plan is not None else ()
        )
        self._demands: dict[VersionKey, ModelDemand] = {}
        self._where: dict[VersionKey, tuple[str, ...]] = {}
        if plan is not None:
            for a in plan.assignments:
                if a.devices:
                    self._demands[a.key] = ModelDemand(a.key, a.bytes, None, a.wanted, a.source)
                    self._where[a.key] = a.devices

    @property
    def planned(self) -> bool:
        """True when changes go through the planner (a start-up plan was given)."""
        return self._plan is not None

    def demand(self, model: ModelConfig, version: int) -> ModelDemand:
        """Size ``version`` of ``model`` (blocking: disk I/O); InvalidArgument when it cannot."""
        return self._demand(model, version)

    @property
    def plan(self) -> Plan | None:
        """The plan of what is placed now (for the status API and the live page)."""
        return self._plan

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self._devices)

    def devices_of(self, key: VersionKey) -> tuple[str, ...]:
        return self._where.get(key, ())

    def placed(self) -> dict[VersionKey, tuple[str, ...]]:
        return dict(self._where)

    # -- changes (each one planned, committed only when feasible) ----------------------------

    def needs_demand(self, key: VersionKey) -> bool:
        """True when ``add`` would size ``key`` (pass it ``demand``, sized off the loop)."""
        return self._plan is not None and key not in self._where

    def add(
        self, model: ModelConfig, version: int, demand: ModelDemand | None = None
    ) -> tuple[str, ...]:
        """Reserve room for ``version`` of ``model`` and return its devices.

        ``demand``: the version's size, when the caller sized it already (off the event loop);
        else it is sized here. Raises DoesNotFit (nothing reserved) when the planner cannot
        place every replica without moving a placed version; InvalidArgument when the version
        cannot be sized.
        """
        key = VersionKey(model.name, version)
        if key in self._where:
            return self._where[key]
        if self._plan is None:
            self._where[key] = (self._default,)
            return self._where[key]
        if demand is None:
            demand = self._demand(model, version)
        plan = self._place({**self._pinned(), key: demand})
        if not plan.feasible:
            raise DoesNotFit(plan.explanation)
        self._commit(plan, {**self._demands, key: demand})
        return self._where[key]

    def remove(self, key: VersionKey) -> None:
        """Release ``key``'s reservation (after it unloaded, or when its load failed)."""
        self._where.pop(key, None)
        if self._demands.pop(key, None) is not None and self._plan is not None:
            self._commit(self._place(self._pinned()), self._demands)

    def check_move(self, key: VersionKey, source: str, target: str) -> tuple[str, ...]:
        """The devices of ``key`` after moving its replica on ``source`` to ``target``.

        Raises DoesNotFit with the planner's explanation when ``target`` has no room (or does
        not exist). Nothing is committed: call ``commit_devices`` once the move is done.
        """
        now = self._where.get(key, ())
        after = tuple(target if d == source else d for d in now)
        if self._plan is None:
            return after
        if target not in self.device_names:
            raise DoesNotFit(
                f"device {target!r} is not in the plan; devices: {', '.join(self.device_names)}"
            )
        pinned = self._pinned()
        pinned[key] = dataclasses.replace(pinned[key], pins=after)
        plan = self._place(pinned)
        if not plan.feasible:
            raise DoesNotFit(plan.explanation)
        return after

    def commit_devices(self, key: VersionKey, devices: tuple[str, ...]) -> None:
        """Record that ``key`` now lives on ``devices`` (a move finished)."""
        self._where[key] = devices
        if self._plan is not None:
            self._commit(self._place(self._pinned()), self._demands)

    def replan(self, pins: Mapping[str, tuple[str, ...] | None]) -> Plan:
        """A fresh plan for everything placed, keeping what it can where it is.

        ``pins`` maps model names to their configured ``devices:`` pins. Nothing is committed.
        Raises DoesNotFit when even a fresh plan cannot place everything.
        """
        if self._plan is None:
            raise DoesNotFit("models load in one place here (no plan): there is nothing to re-plan")
        demands = {
            k: dataclasses.replace(d, pins=pins.get(k.model)) for k, d in self._demands.items()
        }
        plan = place(
            list(demands.values()), self._devices, self._where, headroom_fraction=self._headroom
        )
        if not plan.feasible:
            raise DoesNotFit(plan.explanation)
        return plan

    def lose_devices(
        self, lost: Collection[str]
    ) -> tuple[dict[VersionKey, tuple[str, ...]], dict[VersionKey, str]]:
        """Take ``lost`` out of planning (no room left on them) and re-place every version that
        had a replica there, one at a time in key order, around everything else where it is.

        Returns (versions re-placed -> their devices now; versions that do not fit -> the
        planner's explanation, their reservation released). Nothing else moves.
        """
        gone = set(lost)
        self._devices = tuple(
            dataclasses.replace(d, free_bytes=0, present=False) if d.name in gone else d
            for d in self._devices
        )
        hit = sorted(k for k, where in self._where.items() if gone & set(where))
        saved = {k: self._demands.pop(k) for k in hit if k in self._demands}
        for key in hit:
            self._where.pop(key, None)
        if self._plan is None:
            return {}, {k: "models load in one place here (no plan)" for k in hit}
        self._commit(self._place(self._pinned()), self._demands)
        moved: dict[VersionKey, tuple[str, ...]] = {}
        unplaced: dict[VersionKey, str] = {}
        for key in hit:
            demand = saved[key]
            plan = self._place({**self._pinned(), key: demand})
            if plan.feasible:
                self._commit(plan, {**self._demands, key: demand})
                moved[key] = self._where[key]
            else:
                unplaced[key] = plan.explanation
        return moved, unplaced

    def join_devices(self, devices: Collection[Device]) -> None:
        """``devices`` (a node came back) are plannable again, with the room they have; the
        next change or re-plan may use them. Nothing moves now."""
        back = {d.name: d for d in devices}
        self._devices = tuple(back.get(d.name, d) for d in self._devices)

    # -- internals ---------------------------------------------------------------------------

    def _pinned(self) -> dict[VersionKey, ModelDemand]:
        """Every placed demand pinned to where it is: additions may not move it."""
        return {
            k: dataclasses.replace(d, pins=self._where[k])
            for k, d in self._demands.items()
            if k in self._where
        }

    def _place(self, demands: Mapping[VersionKey, ModelDemand]) -> Plan:
        return place(
            _ordered(demands.values()),
            self._devices,
            self._where,
            headroom_fraction=self._headroom,
        )

    def _commit(self, plan: Plan, demands: Mapping[VersionKey, ModelDemand]) -> None:
        self._plan = plan
        self._demands = dict(demands)
        self._where = {k: d for k, d in plan.placement().items() if k in self._demands}


def _ordered(demands: Iterable[ModelDemand]) -> list[ModelDemand]:
    return sorted(demands, key=lambda d: d.key)
