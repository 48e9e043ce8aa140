"""Rows of the repository index (Triton's repository extension), as values.

``Management.index`` returns ``IndexRow`` values; the front ends render them: REST as Triton's
JSON (``server.http.management``), gRPC as ``RepositoryIndexResponse.ModelIndex``
(``server.grpc.kserve``). The state names are Triton's: ``READY`` for a version that serves,
``UNAVAILABLE`` for a model with nothing loaded; the other version states keep their
``ModelState`` names (``LOADING``, ``FAILED``, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from modelyard.lifecycle.states import ModelState


class IndexState(enum.Enum):
    """A row's state as the repository index names it."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    START = "START"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    END = "END"
    FAILED = "FAILED"

    @classmethod
    def of(cls, state: ModelState) -> IndexState:
        """A version's state: AVAILABLE is READY, the others keep their names."""
        return cls.READY if state is ModelState.AVAILABLE else cls(state.value)


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One row: a version of a model (``version`` set, with its devices), or a model with no
    version loaded (``version`` None: unloaded, or no version found)."""

    name: str
    state: IndexState
    reason: str
    version: int | None = None
    devices: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.state is IndexState.READY
