"""The gRPC server: one ``grpc.aio`` server carrying the KServe v2 service and any others.

Other gRPC APIs (TF Serving's ``PredictionService`` and ``ModelService``) register on the same
server and port through ``extra_servicers``: each is a callable that adds its handlers to the
server.

Every method the server carries goes through the management gate (``_GateInterceptor``) before
its handler runs: a method that ``modelyard.management.access`` does not list as open needs the
token (UNAUTHENTICATED without it, PERMISSION_DENIED when management is off), whichever
servicer registered it, so a method added later is guarded until someone lists it as open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import grpc

from modelyard.errors import ModelyardError, Unavailable
from modelyard.management import Management
from modelyard.management.access import Access, Gate, rpc_access
from modelyard.observability.boundary import Observer
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.kserve import KServeServicer
from modelyard.server.grpc.observe import ObservedRpcs
from modelyard.server.grpc.status import GRPC_STATUS, MalformedRequests


class GrpcServer:
    """A started gRPC server. ``port`` is the bound port (the one picked, when asked for 0);
    ``methods`` the full names (``/package.Service/Method``) of every method it registered.

    Owned by whoever called ``start_grpc_server``, which must ``stop`` it on the same loop.
    """

    def __init__(self, server: grpc.aio.Server, port: int, methods: Sequence[str] = ()) -> None:
        self._server = server
        self.port = port
        self.methods = tuple(methods)

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, give running ones ``grace`` seconds, then cancel what remains."""
        await self._server.stop(grace)


class _GateInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Checks the ``authorization`` metadata of every guarded method before its handler runs.

    A refused call never reaches the handler: its request is not even deserialised."""

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = cast(str, handler_call_details.method)
        if handler is None or rpc_access(method) is Access.OPEN:
            return handler  # no such method (UNIMPLEMENTED), or one anyone may call
        metadata = handler_call_details.invocation_metadata or ()
        authorization = next(
            (v for k, v in metadata if k.lower() == "authorization" and isinstance(v, str)), ""
        )
        try:
            self._gate.check(authorization)
        except ModelyardError as exc:
            return _refusal(exc)
        return handler


def _refusal(error: ModelyardError) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(GRPC_STATUS[error.code], error.message)

    return grpc.unary_unary_rpc_method_handler(refuse)  # request bytes stay undecoded


class _Registrations:
    """The server as servicers see it while they register: records each method's full name."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.methods: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.methods.extend(f"/{service}/{name}" for name in handlers)
        self._server.add_registered_method_handlers(service, handlers)


async def start_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    extra_servicers: Sequence[Callable[[grpc.aio.Server], None]] = (),
    management: Management | None = None,
    management_token: str | None = None,
    observer: Observer | None = None,
) -> GrpcServer:
    """Serve ``inference.GRPCInferenceService`` (and ``extra_servicers``) on ``host:port``.

    ``port`` 0 picks a free port. Messages larger than ``max_message_bytes`` in either direction
    are refused by gRPC with RESOURCE_EXHAUSTED. Guarded methods need ``management_token`` (and
    ``management``); without them they answer PERMISSION_DENIED. Raises Unavailable when the
    address cannot be bound. ``observer``: what sees each inference call end (metrics of
    refusals, access log, traces); None or inactive: no observing layer at all.
    """
    gate = Gate(management_token if management is not None else None)
    server = grpc.aio.server(
        # Observing first, so it sees the calls the others refuse; then the gate, so a refused
        # call is answered before its request is even parsed.
        interceptors=[
            *([ObservedRpcs(observer)] if observer is not None and observer.active else []),
            _GateInterceptor(gate),
            MalformedRequests(),
        ],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Two servers on one port would split the traffic between them silently.
            ("grpc.so_reuseport", 0),
        ],
    )
    registrations = _Registrations(server)
    as_server = cast(grpc.aio.Server, registrations)
    KServeServicer(dataplane, management).add_to_server(as_server)
    for add in extra_servicers:
        add(as_server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen for gRPC on {address}: {exc}") from exc
    if bound == 0:  # older grpc versions report failure this way instead of raising
        raise Unavailable(f"cannot listen for gRPC on {address}: the address is in use or invalid")
    await server.start()
    return GrpcServer(server, bound, registrations.methods)
