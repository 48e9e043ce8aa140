"""Small frozen value types that name things across the whole server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class VersionKey:
    """One version of one model: the unit that is loaded, placed and served."""

    model: str
    version: int

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"
