"""The gRPC server: one ``grpc.aio`` server carrying the KServe v2 service and any others.

Other gRPC APIs (TF Serving's ``PredictionService``) register on the same server and port
through ``extra_servicers``: each is a callable that adds its handlers to the server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from modelyard.errors import Unavailable
from modelyard.management import Management
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.kserve import KServeServicer
from modelyard.server.grpc.status import MalformedRequests


class GrpcServer:
    """A started gRPC server. ``port`` is the bound port (the one picked, when asked for 0).

    Owned by whoever called ``start_grpc_server``, which must ``stop`` it on the same loop.
    """

    def __init__(self, server: grpc.aio.Server, port: int) -> None:
        self._server = server
        self.port = port

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, give running ones ``grace`` seconds, then cancel what remains."""
        await self._server.stop(grace)


async def start_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    extra_servicers: Sequence[Callable[[grpc.aio.Server], None]] = (),
    management: Management | None = None,
    management_token: str | None = None,
) -> GrpcServer:
    """Serve ``inference.GRPCInferenceService`` (and ``extra_servicers``) on ``host:port``.

    ``port`` 0 picks a free port. Messages larger than ``max_message_bytes`` in either direction
    are refused by gRPC with RESOURCE_EXHAUSTED. Raises Unavailable when the address cannot
    be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Two servers on one port would split the traffic between them silently.
            ("grpc.so_reuseport", 0),
        ],
        interceptors=[MalformedRequests()],
    )
    KServeServicer(dataplane, management, management_token).add_to_server(server)
    for add in extra_servicers:
        add(server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen for gRPC on {address}: {exc}") from exc
    if bound == 0:  # older grpc versions report failure this way instead of raising
        raise Unavailable(f"cannot listen for gRPC on {address}: the address is in use or invalid")
    await server.start()
    return GrpcServer(server, bound)
