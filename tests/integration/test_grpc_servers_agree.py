"""The gRPC port's two servers (``--grpc-server modelyard`` and ``grpcio``) answer alike.

The same calls, from grpcio's client, to each server started in process with no models: every
status code and message must be the same, since clients (and their users' error handling) see
both. Inference itself is tested against the default server by the rest of the gRPC tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from modelyard.lifecycle.registry import ModelRegistry
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.server import Implementation, start_grpc_server

SERVICE = "/inference.GRPCInferenceService/"
CALLS: list[tuple[str, Any, Any]] = [
    ("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse),
    ("ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse),
    ("ModelReady", pb.ModelReadyRequest(name="nope"), pb.ModelReadyResponse),
    ("ModelMetadata", pb.ModelMetadataRequest(name="nope"), pb.ModelMetadataResponse),
    ("ModelMetadata", pb.ModelMetadataRequest(name="x", version="abc"), pb.ModelMetadataResponse),
    ("ModelInfer", pb.ModelInferRequest(model_name="nope"), pb.ModelInferResponse),
    ("RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse),
    ("ModelStatistics", pb.ModelStatisticsRequest(), pb.ModelStatisticsResponse),
]


async def _answers(implementation: Implementation) -> list[tuple[str, str]]:
    plane = DataPlane(ModelRegistry())
    server = await start_grpc_server(
        plane, "127.0.0.1", 0, max_message_bytes=1 << 20, implementation=implementation
    )
    answers: list[tuple[str, str]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            for method, request, response in CALLS:
                call = channel.unary_unary(
                    SERVICE + method,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response.FromString,
                )
                try:
                    answer = await call(request, timeout=10)
                    answers.append(("OK", str(answer).replace(plane.version, "V")))
                except grpc.aio.AioRpcError as exc:
                    answers.append((str(exc.code()), exc.details() or ""))
            for raw in (b"\xff\xff\xff", b""):  # not a message; an unknown method
                try:
                    await channel.unary_unary(SERVICE + "ModelInfer")(raw, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    answers.append((str(exc.code()), exc.details() or ""))
            try:
                await channel.unary_unary("/no.Such/Method")(b"", timeout=10)
            except grpc.aio.AioRpcError as exc:
                answers.append((str(exc.code()), exc.details() or ""))
    finally:
        await server.stop(0)
    return answers


def test_both_servers_give_the_same_answers_and_statuses() -> None:
    ours = asyncio.run(_answers(Implementation.FAST))
    theirs = asyncio.run(_answers(Implementation.GRPCIO))
    assert len(ours) == len(CALLS) + 3
    assert ours == theirs
    assert ("StatusCode.UNIMPLEMENTED", "Method not found!") in ours
    assert any(code == "StatusCode.NOT_FOUND" for code, _ in ours)
    assert any(code == "StatusCode.PERMISSION_DENIED" for code, _ in ours)
