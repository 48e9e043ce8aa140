"""The protocol-neutral data plane, over a registry holding a small fake servable."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from modelyard.config import Platform
from modelyard.errors import InvalidArgument, NotFound, Unavailable
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
from modelyard.lifecycle.states import ModelState
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.tensors import DataType, Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec("x", DataType.FP32, (-1, 2)),),
    outputs=(
        TensorSpec("double", DataType.FP32, (-1, 2)),
        TensorSpec("neg", DataType.FP32, (-1, 2)),
    ),
)


class Doubler:
    """Counts calls, so a test can tell whether the model ran."""

    signature = SIG
    signatures = {"serving_default": SIG}

    def __init__(self) -> None:
        self.calls = 0

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"double": inputs["x"] * 2, "neg": -inputs["x"]}

    async def close(self) -> None:
        pass


def _plane() -> tuple[DataPlane, Doubler]:
    registry = ModelRegistry()
    model = Doubler()
    entry = VersionEntry(VersionKey("m", 1), Platform.ONNX)
    entry.transition(ModelState.LOADING)
    entry.signature = SIG
    entry.replicas = [Replica(model, "cpu")]
    entry.transition(ModelState.AVAILABLE)
    registry.add(entry)
    plane = DataPlane(registry)
    plane.started = True
    return plane, model


X = {"x": np.array([[1, 2]], dtype=np.float32)}


def test_infer_returns_every_output_in_signature_order() -> None:
    plane, _ = _plane()
    result = asyncio.run(plane.infer(ModelRef("m"), X))
    assert list(result.outputs) == ["double", "neg"]
    np.testing.assert_array_equal(result.outputs["double"], [[2, 4]])
    assert (result.model, result.version) == ("m", 1)


def test_requested_outputs_in_requested_order() -> None:
    plane, _ = _plane()
    result = asyncio.run(plane.infer(ModelRef("m"), X, ["neg"]))
    assert list(result.outputs) == ["neg"]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [(["nope"], "unknown output 'nope'"), (["neg", "neg"], "output 'neg' is requested twice")],
)
def test_bad_output_requests_are_refused_before_the_model_runs(
    outputs: list[str], message: str
) -> None:
    plane, model = _plane()
    with pytest.raises(InvalidArgument, match=message):
        asyncio.run(plane.infer(ModelRef("m"), X, outputs))
    assert model.calls == 0


def test_bad_input_never_reaches_the_model() -> None:
    plane, model = _plane()
    with pytest.raises(InvalidArgument, match=r"shape \[1, 3\]"):
        asyncio.run(plane.infer(ModelRef("m"), {"x": np.zeros((1, 3), np.float32)}))
    assert model.calls == 0


def test_unknown_model_and_shutdown() -> None:
    plane, _ = _plane()
    with pytest.raises(NotFound):
        asyncio.run(plane.infer(ModelRef("other"), X))
    plane.stopping = True
    assert not plane.ready()
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(plane.infer(ModelRef("m"), X))
