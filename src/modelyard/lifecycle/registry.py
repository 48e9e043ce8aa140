"""Which versions of which models exist, in which state, and which replica serves a request.

Thread/async safety: a ``ModelRegistry`` belongs to one asyncio event loop; every method is
called from that loop only, so no locks are needed. Reads see a consistent snapshot between two
awaits.

``CHANGES.count`` grows on every change a request's resolution could see: a registry method
that adds, removes or relabels, and every assignment to a ``VersionEntry`` field (its state,
error, signature, replicas). What is derived from the registry per request (the data plane's
resolutions, ``DataPlane.resolve``) is kept only while it stays the same, so a change is seen by
the very next request. ``VersionEntry.replicas`` is therefore replaced, never changed in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from modelyard.config.schema import Platform
from modelyard.errors import NotFound, Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.servable import Servable
from modelyard.lifecycle.states import ModelState, check_transition
from modelyard.tensors import Signature


class _Changes:
    """A count of changes (see the module docstring); one for every registry of the process."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


CHANGES = _Changes()


@dataclass(eq=False)
class Replica:
    """One loaded copy of a version on one device, with its count of requests in flight."""

    servable: Servable
    device: str
    in_flight: int = 0


@dataclass(eq=False)
class VersionEntry:
    """The registry's record of one model version. Mutated only by the controller; each
    assignment to a field counts as a change (``CHANGES``): ``replicas`` is replaced, never
    changed in place (``entry.replicas = [*entry.replicas, replica]``)."""

    key: VersionKey
    platform: Platform
    state: ModelState = ModelState.START
    error: str = ""
    signature: Signature | None = None
    replicas: list[Replica] = field(default_factory=list)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        CHANGES.count += 1

    def transition(self, target: ModelState, error: str = "") -> None:
        check_transition(self.state, target)
        self.state = target
        self.error = error

    def pick_replica(self) -> Replica:
        """The replica with the fewest requests in flight (the first of equals)."""
        replicas = self.replicas
        if self.state is not ModelState.AVAILABLE or not replicas:
            raise Unavailable(self.unavailable_reason())
        if len(replicas) == 1:  # the usual version: no key call per request
            return replicas[0]
        return min(replicas, key=_in_flight)

    def unavailable_reason(self) -> str:
        reason = f"model {self.key.model!r} version {self.key.version} is {self.state.value}"
        return f"{reason}: {self.error}" if self.error else reason


def _in_flight(replica: Replica) -> int:
    return replica.in_flight


@dataclass
class _Model:
    name: str
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}

    # -- written by the controller -------------------------------------------------------

    def add(self, entry: VersionEntry) -> None:
        model = self._models.setdefault(entry.key.model, _Model(entry.key.model))
        model.versions[entry.key.version] = entry
        CHANGES.count += 1

    def ensure_model(self, name: str) -> None:
        """Make ``name`` known even before any version of it is registered."""
        self._models.setdefault(name, _Model(name))
        CHANGES.count += 1

    def remove(self, key: VersionKey) -> None:
        model = self._models.get(key.model)
        if model is not None:
            model.versions.pop(key.version, None)
        CHANGES.count += 1

    def remove_model(self, name: str) -> None:
        """Forget ``name`` and all its versions: requests to it get NotFound from now on."""
        self._models.pop(name, None)
        CHANGES.count += 1

    def set_labels(self, name: str, labels: dict[str, int]) -> None:
        self._models[name].labels = dict(labels)
        CHANGES.count += 1

    # -- read by the data plane ----------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def entries(self) -> Iterator[VersionEntry]:
        for model in self._models.values():
            yield from model.versions.values()

    def versions(self, name: str) -> list[VersionEntry]:
        """Every version of ``name``, ascending; NotFound for an unknown model."""
        model = self._model(name)
        return [model.versions[v] for v in sorted(model.versions)]

    def labels(self, name: str) -> dict[str, int]:
        return dict(self._model(name).labels)

    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> VersionEntry:
        """The entry a request names: by version, by label, or the highest AVAILABLE version.

        NotFound names what exists; the returned entry may be in any state (callers that need a
        servable call ``pick_replica``, which raises Unavailable).
        """
        model = self._model(name)
        if label is not None:
            if label not in model.labels:
                known = ", ".join(sorted(model.labels)) or "none"
                raise NotFound(f"model {name!r} has no version label {label!r}; labels: {known}")
            version = model.labels[label]
        if not model.versions:
            raise Unavailable(f"model {name!r} has no version to serve yet")
        if version is not None:
            entry = model.versions.get(version)
            if entry is None:
                raise NotFound(
                    f"model {name!r} has no version {version}; versions: "
                    + ", ".join(str(v) for v in sorted(model.versions))
                )
            return entry
        available = [
            e for v, e in sorted(model.versions.items()) if e.state is ModelState.AVAILABLE
        ]
        if available:
            return available[-1]
        return model.versions[max(model.versions)]

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not served; models: {known}")
        return model
