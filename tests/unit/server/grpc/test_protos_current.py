"""The committed gRPC stubs are current, and they speak the wire format of tritonclient."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from modelyard.server.grpc import gen
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.generated import model_config_pb2 as model_config_pb
from modelyard.testing.protos import assert_same_message, fields

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


def test_messages_and_service_match_tritonclient() -> None:
    """Every message and RPC we declare has the names and numbers tritonclient puts on the wire."""
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = pb.DESCRIPTOR
    assert ours.package == "inference"
    for name, message in ours.message_types_by_name.items():
        assert_same_message(message, triton.DESCRIPTOR.message_types_by_name[name])
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


def test_model_config_is_a_subset_of_tritons() -> None:
    """Our ``ModelConfig`` messages carry some of Triton's fields, each with Triton's name,
    number and type, so tritonclient parses what we send (fields we leave out are absent)."""
    triton = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    ours = model_config_pb.DESCRIPTOR
    assert ours.package == "inference"
    for name, message in ours.message_types_by_name.items():
        theirs = triton.DESCRIPTOR.message_types_by_name[name]
        their_fields = fields(theirs)
        for field, wire in fields(message).items():
            assert their_fields.get(field) == wire, f"{name}.{field}"
    for name, enum in ours.enum_types_by_name.items():
        theirs_enum = triton.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in enum.values} == {
            v.name: v.number for v in theirs_enum.values
        }
    nested = ours.message_types_by_name["ModelInstanceGroup"].enum_types_by_name["Kind"]
    their_nested = triton.DESCRIPTOR.message_types_by_name["ModelInstanceGroup"]
    assert {v.name: v.number for v in nested.values} == {
        v.name: v.number for v in their_nested.enum_types_by_name["Kind"].values
    }
