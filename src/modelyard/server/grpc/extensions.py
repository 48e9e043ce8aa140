"""Triton's statistics and model configuration extensions over gRPC.

The documents are the REST ones (``modelyard.metrics.extensions``) parsed into the response
messages, whose field names are the documents' keys, so both protocols answer the same.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from modelyard.errors import NotFound
from modelyard.metrics.extensions import Extensions
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.server.grpc.generated import grpc_service_pb2 as pb

OFF = "statistics are off (the server was started with --no-metrics)"


def _extensions(dataplane: DataPlane) -> Extensions:
    if dataplane.introspection is None:
        raise NotFound(OFF)
    return dataplane.introspection


def _version(text: str) -> int | None:
    return ModelRef.parse_version(text) if text else None


def model_statistics(dataplane: DataPlane, request: Any) -> Any:
    """``ModelStatisticsResponse`` for a ``ModelStatisticsRequest`` (empty name: every model)."""
    doc = _extensions(dataplane).statistics(request.name, _version(request.version))
    return json_format.ParseDict(doc, pb.ModelStatisticsResponse())


def model_config(dataplane: DataPlane, request: Any) -> Any:
    """``ModelConfigResponse`` for a ``ModelConfigRequest``."""
    doc = _extensions(dataplane).config(request.name, _version(request.version))
    return json_format.ParseDict({"config": doc}, pb.ModelConfigResponse())
