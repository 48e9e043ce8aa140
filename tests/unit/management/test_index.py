"""Repository index rows: every version state has a Triton name, and rows render as Triton's
JSON (the shape tritonclient and the integration tests read)."""

from __future__ import annotations

import pytest

from modelyard.lifecycle.states import ModelState
from modelyard.management.index import IndexRow, IndexState
from modelyard.server.http.management import index_row_json


@pytest.mark.parametrize("state", list(ModelState))
def test_every_version_state_has_an_index_name(state: ModelState) -> None:
    name = IndexState.of(state).value
    assert name == ("READY" if state is ModelState.AVAILABLE else state.value)


def test_rows_render_as_triton_json() -> None:
    version = IndexRow("m", IndexState.of(ModelState.AVAILABLE), "", 3, ("sim0", "sim1"))
    model = IndexRow("gone", IndexState.UNAVAILABLE, "unloaded")
    assert index_row_json(version) == {
        "name": "m", "version": "3", "state": "READY", "reason": "", "devices": ["sim0", "sim1"],
    }  # fmt: skip
    assert index_row_json(model) == {"name": "gone", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert (version.ready, model.ready) == (True, False)
