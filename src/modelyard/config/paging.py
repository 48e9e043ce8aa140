"""Checks of the ``paging:`` keys that span several entries (the loader adds the file line).

Each problem is ``(location, message)``: the location is the key path the loader turns into a
file line (``models.3.resident``), the message names the key, the value and the fix.
"""

from __future__ import annotations

from modelyard.config.schema import ServerConfig

Problem = tuple[tuple[int | str, ...], str]


CLUSTER_AND_PAGING = (
    "cannot be used with a cluster (cluster:, or --ray-address): paged-out versions are "
    "kept in this machine's host memory (/dev/shm) and workers load them through links there, "
    "which workers on other nodes cannot read; remove the paging: block to serve on the "
    "cluster, or remove cluster: (and --ray-address) to page on this machine (docs/paging.md)"
)
"""Why ``paging:`` is refused with ``cluster:`` (the loader puts file:line: paging: first)."""


def paging_problems(config: ServerConfig) -> list[Problem]:
    """Contradictions between ``paging:``, ``cluster:`` and the models' ``resident:`` keys.

    ``resident: true`` without a ``paging:`` block means nothing (every model is resident
    then): it is refused, so a user who meant to turn paging on learns that it is off.
    ``paging:`` with ``cluster:`` is refused (``CLUSTER_AND_PAGING`` says why).
    """
    if config.paging is not None:
        return [(("paging",), CLUSTER_AND_PAGING)] if config.cluster is not None else []
    return [
        (
            ("models", i, "resident"),
            f"model {m.name!r} sets resident: true, but paging is off (no paging: block), so "
            "every model stays on its device anyway; add a top-level paging: block (e.g. "
            "paging: {host_memory: 8GiB}) to page the other models, or remove resident:",
        )
        for i, m in enumerate(config.models)
        if m.resident
    ]
