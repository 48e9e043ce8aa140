"""Shared fixtures: one real server over every test model, started once per test session.

The modules that use ``server`` only read from it (inference, metadata, status, metrics deltas,
bad requests it must survive); none loads, unloads or kills anything on it. Starting it once
instead of once per module saves a full start (every test model loaded in its workers) and stop
per module. A module that needs a server of its own (other models, options or faults) defines
its own ``server`` or calls ``serving(...)`` itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def server(repository: tuple[Path, dict[str, dict[int, BuiltModel]]]) -> Iterator[RunningServer]:
    with serving(repository[0], max_request_bytes=SMALL_BODY_LIMIT) as running:
        yield running


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
