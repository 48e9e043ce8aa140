"""The committed gRPC stubs are current, and they speak the wire format of tritonclient."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest

from modelyard.server.grpc import gen
from modelyard.server.grpc.generated import grpc_service_pb2 as pb

pytest.importorskip("grpc_tools")


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    """Fails after a .proto edit without regenerating, or with another grpcio-tools version.

    The stubs embed the grpcio-tools version that wrote them (and require at least that grpcio
    and protobuf at runtime), so the dev environment pins grpcio-tools.
    """
    fix = (
        f"run: python -m modelyard.server.grpc.gen "
        f"(grpcio-tools {importlib.metadata.version('grpcio-tools')} installed)"
    )
    for proto_dir, generated_dir in gen.TARGETS:
        out = tmp_path / generated_dir.parent.name
        # generate() runs protoc in a child process (see modelyard.server.grpc.gen for why).
        written = gen.generate(out, proto_dir)
        names = sorted(p.name for p in written)
        committed = sorted(p.name for p in generated_dir.glob("*.py"))
        assert names == committed, fix
        for path in written:
            assert path.read_text() == (generated_dir / path.name).read_text(), (
                f"{generated_dir / path.name} is stale; {fix}"
            )


def _fields(message: Any) -> dict[str, tuple[Any, ...]]:
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
        for f in message.fields
    }


def _assert_same_message(ours: Any, theirs: Any) -> None:
    assert ours.full_name == theirs.full_name
    assert _fields(ours) == _fields(theirs), ours.full_name
    for nested in ours.nested_types:
        _assert_same_message(nested, theirs.nested_types_by_name[nested.name])


def test_messages_and_service_match_tritonclient() -> None:
    """Every message and RPC we declare has the names and numbers tritonclient puts on the wire."""
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = pb.DESCRIPTOR
    assert ours.package == "inference"
    for name, message in ours.message_types_by_name.items():
        _assert_same_message(message, triton.DESCRIPTOR.message_types_by_name[name])
    service = ours.services_by_name["GRPCInferenceService"]
    their_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == their_service.full_name
    for method in service.methods:
        theirs = their_service.methods_by_name[method.name]
        assert method.input_type.full_name == theirs.input_type.full_name
        assert method.output_type.full_name == theirs.output_type.full_name
    assert {m.name for m in service.methods} >= {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


def _tf_counterparts() -> dict[str, Any]:
    """Our TF message descriptors by full name, each with tensorflow-serving-api's own."""
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2")
    from tensorflow_serving.apis import model_service_pb2
    from tensorflow_serving.config import model_server_config_pb2

    theirs: dict[str, Any] = {}

    def collect(file: Any) -> None:
        for message in file.message_types_by_name.values():
            theirs.setdefault(message.full_name, message)
        for dependency in file.dependencies:
            collect(dependency)

    for module in (apis, model_service_pb2, model_server_config_pb2):
        collect(module.DESCRIPTOR)
    return theirs


def test_tf_messages_and_services_match_tensorflow_serving_api() -> None:
    """Every TF message and RPC we declare has the names and numbers TF Serving's clients use.

    BatchingParameters is not in tensorflow-serving-api; its numbers are checked by hand in
    tests/unit/config/test_tfserving_config.py.
    """
    from modelyard.tfproto.generated import (
        tensorflow_core_pb2,
        tensorflow_serving_apis_pb2,
        tensorflow_serving_config_pb2,
    )

    theirs = _tf_counterparts()
    checked = 0
    for module in (tensorflow_core_pb2, tensorflow_serving_config_pb2, tensorflow_serving_apis_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            if message.full_name == "tensorflow.serving.BatchingParameters":
                continue
            other = theirs[message.full_name]
            ours_fields = _fields(message)
            assert ours_fields == {n: f for n, f in _fields(other).items() if n in ours_fields}
            for nested in message.nested_types:
                if not nested.GetOptions().map_entry:
                    _assert_same_message(nested, other.nested_types_by_name[nested.name])
            checked += 1
    assert checked >= 30
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    for service_module, name in (
        (prediction_service_pb2, "PredictionService"),
        (model_service_pb2, "ModelService"),
    ):
        ours = tensorflow_serving_apis_pb2.DESCRIPTOR.services_by_name[name]
        their_service = service_module.DESCRIPTOR.services_by_name[name]
        assert ours.full_name == their_service.full_name
        for method in ours.methods:
            other_method = their_service.methods_by_name[method.name]
            assert method.input_type.full_name == other_method.input_type.full_name
            assert method.output_type.full_name == other_method.output_type.full_name
