"""The rows statistics count for a request (``inference_count``): dim 0 of its first input, 1
for a scalar. With one input the data plane reads it by the signature's name
(``Signature.only_input``), with several from the request's first input, as it always did;
a request refused before the device counts no rows, on the hot paths (``lane=``) and off them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from modelyard.errors import InvalidArgument
from modelyard.ids import VersionKey
from modelyard.metrics import ServerMetrics
from modelyard.metrics.stats import VersionStats
from modelyard.observability.calls import KSERVE_GRPC_INDEX
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.testing.dataplane import serving_dataplane

KEY = VersionKey("m", 1)
LANES = (KSERVE_GRPC_INDEX, -1)  # a hot path's counting-only call, and any other


class Echo:
    """A servable that answers its first input as ``y``, in the caller's task."""

    def __init__(self, signature: Signature) -> None:
        self._signature = signature

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return {"serving_default": self._signature}

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        return {"y": next(iter(inputs.values()))}

    async def close(self) -> None:
        pass


def _serving(*inputs: TensorSpec) -> tuple[DataPlane, ServerMetrics]:
    signature = Signature(inputs, (TensorSpec("y", DataType.FP32, (-1,)),))
    return serving_dataplane(KEY, signature, Echo(signature))


def _send(dataplane: DataPlane, requests: list[dict[str, np.ndarray]], lane: int) -> None:
    async def send() -> None:
        for inputs in requests:
            await dataplane.infer(ModelRef("m"), inputs, lane=lane)

    asyncio.run(send())


def _stats(metrics: ServerMetrics) -> VersionStats:
    stats = metrics.book.get(KEY)
    assert stats is not None
    return stats


def test_only_input_is_the_name_of_a_signatures_single_input_and_none_otherwise() -> None:
    y = (TensorSpec("y", DataType.FP32, (-1,)),)
    assert Signature((TensorSpec("x", DataType.FP32, (-1, 4)),), y).only_input == "x"
    two = (TensorSpec("a", DataType.FP32, (-1,)), TensorSpec("b", DataType.FP32, (-1,)))
    assert Signature(two, y).only_input is None
    assert Signature((), y).only_input is None


@pytest.mark.parametrize("lane", LANES)
def test_one_input_counts_its_dim_0_and_a_scalar_one_row(lane: int) -> None:
    dataplane, metrics = _serving(TensorSpec("x", DataType.FP32, (-1, 2)))
    sizes = [1, 5, 1, 3]
    _send(dataplane, [{"x": np.ones((n, 2), np.float32)} for n in sizes], lane)
    stats = _stats(metrics)
    assert stats.success_count == 4
    assert stats.inference_count == sum(sizes)
    assert {size: row[0] for size, row in stats.batches.items()} == {1: 2, 5: 1, 3: 1}

    dataplane, metrics = _serving(TensorSpec("s", DataType.FP32, ()))
    _send(dataplane, [{"s": np.array(2.0, np.float32)}] * 3, lane)
    stats = _stats(metrics)
    assert stats.success_count == stats.inference_count == 3


@pytest.mark.parametrize("lane", LANES)
def test_several_inputs_count_the_requests_first_input_not_the_signatures(lane: int) -> None:
    dataplane, metrics = _serving(
        TensorSpec("a", DataType.FP32, (-1,)), TensorSpec("b", DataType.FP32, (-1,))
    )
    # The request names b first: its 3 rows are counted, not a's 2.
    _send(dataplane, [{"b": np.ones(3, np.float32), "a": np.ones(2, np.float32)}], lane)
    _send(dataplane, [{"a": np.ones(2, np.float32), "b": np.ones(3, np.float32)}], lane)
    stats = _stats(metrics)
    assert stats.success_count == 2
    assert stats.inference_count == 3 + 2


@pytest.mark.parametrize("lane", LANES)
def test_a_request_refused_before_the_device_counts_a_failure_and_no_rows(lane: int) -> None:
    dataplane, metrics = _serving(TensorSpec("x", DataType.FP32, (-1, 2)))
    _send(dataplane, [{"x": np.ones((4, 2), np.float32)}], lane)
    with pytest.raises(InvalidArgument):  # a wrong shape: refused by the signature's check
        _send(dataplane, [{"x": np.ones((4, 3), np.float32)}], lane)
    with pytest.raises(InvalidArgument):  # an input the model does not have
        _send(dataplane, [{"z": np.ones((4, 2), np.float32)}], lane)
    stats = _stats(metrics)
    assert stats.success_count == 1
    assert stats.inference_count == 4
    assert stats.fail_count == 2
