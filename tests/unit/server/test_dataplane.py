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


def _version(plane: DataPlane, version: int, model: object) -> VersionEntry:
    entry = VersionEntry(VersionKey("m", version), Platform.ONNX)
    entry.transition(ModelState.LOADING)
    entry.signature = SIG
    entry.replicas = [Replica(model, "cpu")]  # type: ignore[arg-type]
    entry.transition(ModelState.AVAILABLE)
    plane._registry.add(entry)
    return entry


def test_the_next_request_sees_every_change_of_the_registry() -> None:
    """A model's resolution is kept between requests; each change is seen at once."""
    plane, _ = _plane()
    registry = plane._registry
    assert plane.resolve(ModelRef("m")) is plane.resolve(ModelRef("m"))  # kept

    async def version() -> int:
        return (await plane.infer(ModelRef("m"), X)).version

    async def run() -> None:
        assert await version() == 1
        two = _version(plane, 2, Doubler())  # a new version: served from the next request
        assert await version() == 2
        two.transition(ModelState.UNLOADING)  # unloading: the next request goes back to 1
        assert await version() == 1
        two.transition(ModelState.END)
        registry.remove(two.key)
        one = registry.resolve("m", 1)
        one.replicas = []  # its worker died: out of rotation
        one.transition(ModelState.LOADING, "reloading: worker died")
        with pytest.raises(Unavailable, match="reloading: worker died"):
            await version()
        other = TwoSignatures()
        one.replicas = [Replica(other, "cpu")]  # reloaded, and serving another signature too
        one.transition(ModelState.AVAILABLE)
        result = await plane.infer(ModelRef("m"), X, signature_name="neg_only")
        assert list(result.outputs) == ["neg"]
        assert other.names == ["neg_only"]
        registry.set_labels("m", {"stable": 1})
        assert (await plane.infer(ModelRef("m", label="stable"), X)).version == 1
        registry.set_labels("m", {})
        with pytest.raises(NotFound, match="no version label 'stable'"):
            await plane.infer(ModelRef("m", label="stable"), X)
        registry.remove(VersionKey("m", 1))
        with pytest.raises(Unavailable, match="no version to serve"):
            await version()
        registry.remove_model("m")
        with pytest.raises(NotFound, match="model 'm' is not served"):
            await version()

    asyncio.run(run())


def test_a_kept_resolution_still_refuses_once_the_server_stops() -> None:
    plane, _ = _plane()
    plane.resolve(ModelRef("m"), "serving_default")
    plane.stopping = True
    with pytest.raises(Unavailable, match="shutting down"):
        plane.resolve(ModelRef("m"), "serving_default")
    with pytest.raises(Unavailable, match="shutting down"):
        asyncio.run(plane.infer(ModelRef("m"), X))
