"""Shared fixtures: one real server over every test model, shared by the modules that use it.

The modules that use the shared ``server`` only read from it (inference, metadata, status,
metrics deltas, bad requests it must survive); none loads, unloads or kills anything on it. So
it starts once for all of them instead of once per module (each start loads every test model in
its workers): ``pytest_collection_modifyitems`` runs those modules one after another, and the
server is stopped as soon as the next test does not use it, so no other test ever sees its
worker processes among this process's children. A module that needs a server of its own
(other models, options or faults) defines its own ``server`` or calls ``serving(...)`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from modelyard.testing.models import BuiltModel, build_test_repository
from modelyard.testing.server import RunningServer, serving

SMALL_BODY_LIMIT = 256 * 1024
"""Request body limit of the shared server, small enough to test the 413 cheaply."""


@pytest.fixture(scope="session")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, dict[int, BuiltModel]]]:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def models(
    repository: tuple[Path, dict[str, dict[int, BuiltModel]]],
) -> dict[str, dict[int, BuiltModel]]:
    return repository[1]


@pytest.fixture(scope="session")
def body_limit() -> int:
    return SMALL_BODY_LIMIT


class _SharedServer:
    """The shared server, started on first use and kept while the tests that follow use it."""

    def __init__(self) -> None:
        self._stack: ExitStack | None = None
        self.running: RunningServer | None = None

    def get(self, repository: Path) -> RunningServer:
        if self.running is None:
            stack = ExitStack()
            self.running = stack.enter_context(
                serving(repository, max_request_bytes=SMALL_BODY_LIMIT)
            )
            self._stack = stack
        return self.running

    def stop(self) -> None:
        stack, self._stack, self.running = self._stack, None, None
        if stack is not None:
            stack.close()


_SHARED = _SharedServer()


def _uses_shared_server(item: pytest.Item) -> bool:
    """True when ``item`` gets conftest's ``server``: it asks for a ``server`` (directly or
    through its fixtures) and its module defines none of its own."""
    module = getattr(item, "module", None)
    return (
        module is not None
        and "server" in getattr(item, "fixturenames", ())
        and not hasattr(module, "server")
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the shared server's users one after another, where the first of them was."""
    users = [item for item in items if _uses_shared_server(item)]
    if not users:
        return
    for item in users:  # in parallel runs (tests/conftest.py): all in one process, together
        item.add_marker(pytest.mark.xdist_group("shared-server"))
    first = items.index(users[0])
    chosen = set(users)
    others = [item for item in items if item not in chosen]
    before = [item for item in items[:first] if item not in chosen]
    items[:] = before + users + others[len(before) :]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Stop the shared server once the next test does not use it (after this test's own
    fixtures are torn down)."""
    result = yield
    if _SHARED.running is not None and (nextitem is None or not _uses_shared_server(nextitem)):
        _SHARED.stop()
    return result


@pytest.fixture(scope="module")
def server(repository: tuple[Path, dict[str, dict[int, BuiltModel]]]) -> RunningServer:
    return _SHARED.get(repository[0])  # stopped by pytest_runtest_teardown


@pytest.fixture(scope="module")
def one_intra_op_thread() -> Iterator[None]:
    """ONNX sessions with one intra-op thread each: many sessions on 2 shared cores would
    otherwise oversubscribe them and make load loops measure the scheduler."""
    old = os.environ.get("MODELYARD_INTRA_OP_THREADS")
    os.environ["MODELYARD_INTRA_OP_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("MODELYARD_INTRA_OP_THREADS", None)
    else:
        os.environ["MODELYARD_INTRA_OP_THREADS"] = old
