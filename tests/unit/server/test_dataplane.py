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
from modelyard.server.dataplane import DataPlane, ModelRef, Resolved
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
        self.names: list[str | None] = []  # the signature_name of each call

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        self.names.append(signature_name)
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


NEG = Signature(inputs=SIG.inputs, outputs=(TensorSpec("neg", DataType.FP32, (-1, 2)),))


class TwoSignatures(Doubler):
    signatures = {"serving_default": SIG, "neg_only": NEG}


def test_the_default_signature_by_name_runs_as_the_default_and_others_by_name() -> None:
    plane, _ = _plane()
    model = TwoSignatures()
    plane._registry.resolve("m").replicas = [Replica(model, "cpu")]
    asyncio.run(plane.infer(ModelRef("m"), X, signature_name="serving_default"))
    result = asyncio.run(plane.infer(ModelRef("m"), X, signature_name="neg_only"))
    assert list(result.outputs) == ["neg"]
    # None: the default signature, which a batcher may batch; other names go to the servable.
    assert model.names == [None, "neg_only"]


def test_an_unknown_signature_names_the_ones_the_model_has() -> None:
    plane, _ = _plane()
    model = TwoSignatures()
    plane._registry.resolve("m").replicas = [Replica(model, "cpu")]
    message = "serving signature 'nope' not found; this model has 'serving_default', 'neg_only'"
    with pytest.raises(InvalidArgument, match=message):
        asyncio.run(plane.infer(ModelRef("m"), X, signature_name="nope"))
    with pytest.raises(InvalidArgument, match=message):
        plane.resolve(ModelRef("m")).named("nope")
    assert model.calls == 0


def test_a_resolved_request_runs_on_the_version_it_was_resolved_to() -> None:
    plane, _ = _plane()
    entry = VersionEntry(VersionKey("m", 2), Platform.ONNX)
    entry.transition(ModelState.LOADING)
    entry.signature = SIG
    entry.replicas = [Replica(Doubler(), "cpu")]
    entry.transition(ModelState.AVAILABLE)
    plane._registry.add(entry)
    plane._registry.set_labels("m", {"stable": 1})
    target = plane.resolve(ModelRef("m", label="stable"), "serving_default")
    assert isinstance(target, Resolved)
    plane._registry.set_labels("m", {"stable": 2})  # the label moves while the body decodes
    assert asyncio.run(plane.infer(target, X)).version == 1
    assert asyncio.run(plane.infer(ModelRef("m", label="stable"), X)).version == 2
    plane.stopping = True
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(plane.infer(target, X))
