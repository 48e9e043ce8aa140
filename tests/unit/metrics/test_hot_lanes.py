"""Counting on the hot paths (``modelyard.observability.calls``' module docstring): the adapter
passes its lane to the data plane and nothing is current. Each request is counted once under
its protocol: a success or a failure by the data plane (which marks the error ``counted``), a
refusal before it by the gRPC error mapping (``server/grpc/observe.refused``), in process."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from modelyard.errors import Code, InvalidArgument, ModelyardError
from modelyard.observability.calls import CURRENT, KSERVE_GRPC_INDEX, Protocol
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.observe import inference_protocol, refused
from modelyard.testing.dataplane import DOUBLE_KEY, doubling_dataplane


class _Servicer:
    """What ``refused`` asks of a servicer: its data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane


def _answer(dataplane: DataPlane, ref: ModelRef, x: np.ndarray) -> ModelyardError | None:
    """One KServe gRPC call as the hot path serves it: the data plane under the adapter's
    lane, and the error mapping's ``refused`` for a failure. Its error, None if it succeeded."""
    protocol = inference_protocol("inference.GRPCInferenceService", "ModelInfer")
    request = pb.ModelInferRequest(model_name=ref.name)

    async def call() -> None:
        assert CURRENT.get() is None  # nothing is set per call on the hot path
        await dataplane.infer(ref, {"x": x}, lane=KSERVE_GRPC_INDEX)

    try:
        asyncio.run(call())
    except ModelyardError as exc:
        refused(_Servicer(dataplane), protocol, request, exc)
        return exc
    return None


def test_the_hot_methods_know_their_protocol_once() -> None:
    assert inference_protocol("inference.GRPCInferenceService", "ModelInfer") is (
        Protocol.KSERVE_GRPC
    )
    assert inference_protocol("tensorflow.serving", "Predict") is Protocol.TFSERVING_GRPC
    assert inference_protocol("tensorflow.serving", "GetModelMetadata") is None


def test_each_call_is_counted_once_on_its_lane_with_nothing_current() -> None:
    dataplane, metrics = doubling_dataplane()
    good = np.ones(2, np.float32)
    assert _answer(dataplane, ModelRef("double"), good) is None
    bad = _answer(dataplane, ModelRef("double"), np.ones((2, 2), np.float32))  # wrong rank
    assert bad is not None
    assert bad.counted
    unknown = _answer(dataplane, ModelRef("nothing"), good)
    assert unknown is not None
    assert unknown.counted
    # A refusal before the data plane (a message that did not decode, say): counted by the
    # error mapping, against the version the request named.
    request = pb.ModelInferRequest(model_name="double")
    protocol = inference_protocol("inference.GRPCInferenceService", "ModelInfer")
    refused(_Servicer(dataplane), protocol, request, InvalidArgument("no such datatype"))
    stats = metrics.book.get(DOUBLE_KEY)
    assert stats is not None
    assert stats.outcomes == {("kserve_grpc", "OK"): 1, ("kserve_grpc", "INVALID_ARGUMENT"): 2}
    assert stats.success_count == stats.request_duration.count == 1
    assert metrics.book.rejected == {("kserve_grpc", Code.NOT_FOUND): 1}


@pytest.mark.parametrize("metrics_on", [True, False])
def test_a_method_that_is_not_inference_counts_nothing(metrics_on: bool) -> None:
    dataplane, metrics = doubling_dataplane()
    if not metrics_on:
        dataplane.metrics = None
    refused(_Servicer(dataplane), None, object(), InvalidArgument("bad metadata request"))
    refused(
        _Servicer(dataplane),
        Protocol.KSERVE_GRPC if not metrics_on else None,
        pb.ModelInferRequest(model_name="double"),
        InvalidArgument("x"),
    )
    assert metrics.book.get(DOUBLE_KEY) is None
    assert metrics.book.rejected == {}


def test_a_success_on_a_given_lane_tells_an_observed_call() -> None:
    """With an access log or traces a ``Call`` is current: the data plane fills it in even
    though the adapter passed its lane (the access line names the version it ran on)."""
    from modelyard.observability.calls import Call

    dataplane, metrics = doubling_dataplane()
    call = Call(Protocol.KSERVE_GRPC)

    async def observed() -> Any:
        CURRENT.set(call)
        return await dataplane.infer(
            ModelRef("double"), {"x": np.ones(3, np.float32)}, lane=KSERVE_GRPC_INDEX
        )

    asyncio.run(observed())
    assert (call.counted, call.model, call.version, call.rows) == (True, "double", "1", 3)
    stats = metrics.book.get(DOUBLE_KEY)
    assert stats is not None
    assert stats.outcomes == {("kserve_grpc", "OK"): 1}
