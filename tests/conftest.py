"""Suite-wide collection rules for parallel runs.

``make test`` runs the suite in two phases (Makefile): ``pytest -n 2 --dist loadgroup -m "not
serial"`` (pytest-xdist, two processes), then ``pytest -m serial`` alone. ``SERIAL`` names the
modules that assert on real time (deadlines, latency while others run, how fast a stuck worker
is found, a fixed-length load): they run after the rest, one at a time, with the machine to
themselves as in a serial run, so a second test's CPU use cannot push them past their margins.

In the parallel phase each module is one ``xdist_group``: its tests run in one process, one
after another, so a module-scoped server starts once, as in a serial run. A conftest may put
tests in a larger group first (tests/integration/conftest.py: every user of the shared server,
so it starts once): pytest calls that deeper conftest's hook first, and this one leaves those
alone (an item in two groups would be in a third, their joined name). Both run before ``-m``
deselects and before xdist reads the groups. Without ``-n`` the groups do nothing.
"""

from __future__ import annotations

import pytest

SERIAL = frozenset(
    {
        "tests/cluster/test_ray_cluster.py",
        "tests/integration/test_fault_bad_client.py",
        "tests/integration/test_fault_deadlines.py",
        "tests/integration/test_fault_slow_model.py",
        "tests/integration/test_fault_stuck_worker.py",
        "tests/integration/test_overload.py",
        "tests/integration/test_paging_inflight.py",
        "tests/integration/test_paging_load.py",
        "tests/unit/batching/test_batcher_deadlines.py",
        "tests/unit/server/test_dataplane_deadlines.py",
    }
)
"""Test modules that run alone (marked ``serial``), relative to the repository root."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module in SERIAL:
            item.add_marker(pytest.mark.serial)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(module))
