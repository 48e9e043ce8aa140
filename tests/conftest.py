"""Suite-wide collection rules.

Parallel runs (``make test`` runs ``pytest -n 2 --dist loadgroup``, pytest-xdist): each test
module is one ``xdist_group``, so a module's tests run in one process, one after another, and a
module-scoped server starts once, as in a serial run. A conftest may put tests in a larger group
first (tests/integration/conftest.py: every user of the shared server, so it starts once); this
hook runs last and leaves those alone. Without ``-n`` the marks do nothing.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
