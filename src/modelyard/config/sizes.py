"""Byte sizes as users write them: ``4GiB``, ``512MiB``, ``15GB``, ``1.5 GiB``, or plain bytes."""

from __future__ import annotations

import re

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str) -> int:
    """Bytes in ``value``; ValueError with the accepted forms when it is not a size."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return int(value)
    if not isinstance(value, str):  # a list or an object in YAML/JSON; ValueError for pydantic
        raise ValueError(f"{value!r} is not a size; write bytes or a number with a unit, e.g. 4GiB")
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{value!r} is not a size; write bytes or a number with a unit, "
            "e.g. 4GiB, 512MiB, 15GB, 1048576"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n_bytes: int | float) -> str:
    """``4294967296`` -> ``4.0 GiB``: binary units, one decimal."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
