"""The gRPC port's two servers (``--grpc-server modelyard`` and ``grpcio``) answer alike.

The same calls, from grpcio's client, to each server started in process with no models: every
status code and message must be the same, since clients (and their users' error handling) see
both. Inference itself is tested against the default server by the rest of the gRPC tests.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

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
    # Details with "%" and non-ASCII: grpc-message's percent-encoding, decoded alike.
    ("ModelMetadata", pb.ModelMetadataRequest(name="café 100%"), pb.ModelMetadataResponse),
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
    assert any("café 100%" in details for _, details in ours)
    assert any(code == "StatusCode.PERMISSION_DENIED" for code, _ in ours)


@pytest.mark.parametrize("implementation", list(Implementation))
def test_stop_lets_a_call_in_flight_finish_and_refuses_new_ones(
    implementation: Implementation,
) -> None:
    """``stop(grace)``, as ``serve`` does on SIGTERM: the call already running is answered, a
    call started after is not served."""

    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0.5)
        return b"done:" + request

    def add(server: Any) -> None:
        handlers = {"Slow": grpc.unary_unary_rpc_method_handler(slow)}
        server.add_registered_method_handlers("test.S", handlers)

    async def scenario() -> tuple[bytes, str]:
        server = await start_grpc_server(
            DataPlane(ModelRegistry()),
            "127.0.0.1",
            0,
            max_message_bytes=1 << 20,
            extra_servicers=[add],
            management=cast(Any, object()),  # the method is guarded: a token lets it in
            management_token="t",
            implementation=implementation,
        )
        metadata = (("authorization", "Bearer t"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary("/test.S/Slow")
            running = asyncio.ensure_future(call(b"x", metadata=metadata, timeout=10))
            await asyncio.sleep(0.2)  # the call is in its handler
            stopping = asyncio.ensure_future(server.stop(5))
            answer = await running
            await stopping
            try:
                await call(b"y", metadata=metadata, timeout=2)
                later = "served"
            except grpc.aio.AioRpcError as exc:
                later = str(exc.code())
        return answer, later

    answer, later = asyncio.run(scenario())
    assert answer == b"done:x"
    assert later != "served"
