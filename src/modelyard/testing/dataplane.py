"""An in-process data plane over one model version that answers at once (``y = 2 x``), with
statistics and metrics on: for tests of the protocol boundaries and of the counting, without
worker processes or sockets."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelyard.config.schema import Platform
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, Replica, VersionEntry
from modelyard.lifecycle.states import ModelState
from modelyard.metrics import ServerMetrics
from modelyard.servable import Servable
from modelyard.server.dataplane import DataPlane
from modelyard.tensors import DataType, Signature, TensorSpec

DOUBLE_SIGNATURE = Signature(
    (TensorSpec("x", DataType.FP32, (-1,)),), (TensorSpec("y", DataType.FP32, (-1,)),)
)
DOUBLE_KEY = VersionKey("double", 1)


class DoublingServable:
    """A servable of ``DOUBLE_SIGNATURE`` that answers ``y = 2 x`` in the caller's task."""

    @property
    def signature(self) -> Signature:
        return DOUBLE_SIGNATURE

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return {"serving_default": DOUBLE_SIGNATURE}

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}

    async def close(self) -> None:
        pass


def doubling_dataplane() -> tuple[DataPlane, ServerMetrics]:
    """A started data plane serving ``DOUBLE_KEY`` (AVAILABLE, one ``DoublingServable``
    replica on ``cpu``), and its metrics."""
    return serving_dataplane(DOUBLE_KEY, DOUBLE_SIGNATURE, DoublingServable())


def serving_dataplane(
    key: VersionKey, signature: Signature, servable: Servable
) -> tuple[DataPlane, ServerMetrics]:
    """A started data plane serving ``key`` (AVAILABLE, of ``signature``, ``servable`` its one
    replica on ``cpu``), and its metrics."""
    registry = ModelRegistry()
    entry = VersionEntry(key, Platform.ONNX, signature=signature)
    entry.transition(ModelState.LOADING)
    entry.replicas = [Replica(servable, "cpu")]
    entry.transition(ModelState.AVAILABLE)
    registry.add(entry)
    metrics = ServerMetrics(registry)
    dataplane = DataPlane(registry, metrics=metrics)
    dataplane.started = True
    return dataplane, metrics
