"""The gRPC server: one ``grpc.aio`` server carrying the KServe v2 service and any others.

Other gRPC APIs (TF Serving's ``PredictionService`` and ``ModelService``) register on the same
server and port through ``extra_servicers``: each is a callable that adds its handlers to the
server.

Every method the server carries goes through the management gate before its handler runs: a
method that ``modelyard.management.access`` does not list as open needs the token
(UNAUTHENTICATED without it, PERMISSION_DENIED when management is off), whichever servicer
registered it, so a method added later is guarded until someone lists it as open.

The gate and ``refuse_malformed`` are put around each method's handler once, when a servicer
registers it (``_Registrations``), not by server interceptors: an interceptor is a coroutine
run on every call of every method, and the two cost about as much per call as the whole KServe
adapter. An open method (inference, health, metadata) so runs with no wrapper at all beyond the
lenient request parser.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import grpc

from modelyard.errors import ModelyardError
from modelyard.management import Management
from modelyard.management.access import Access, Gate, rpc_access
from modelyard.observability.boundary import Observer
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.fast import FastServer
from modelyard.server.grpc.hotpath import serializer_passing_encoded
from modelyard.server.grpc.http2 import Connection, server_factory
from modelyard.server.grpc.kserve import KServeServicer
from modelyard.server.grpc.observe import observed
from modelyard.server.grpc.status import GRPC_STATUS, refuse_malformed
from modelyard.server.listen import ListenError, Protocol


class Implementation(enum.Enum):
    """Which HTTP/2 server carries the gRPC port (``serve --grpc-server``)."""

    FAST = "modelyard"
    """``server/grpc/fast.py`` on ``server/grpc/http2.py``: unary calls on the event loop,
    about a tenth of grpc.aio's CPU per call."""
    GRPCIO = "grpcio"
    """grpc.aio's server (the one before; kept selectable for a release)."""


DEFAULT_IMPLEMENTATION = Implementation.FAST


class GrpcServer:
    """A started gRPC server. ``port`` is the bound port (the one picked, when asked for 0);
    ``methods`` the full names (``/package.Service/Method``) of every method it registered.

    Owned by whoever called ``start_grpc_server``, which must ``stop`` it on the same loop.
    """

    def __init__(
        self,
        stop: Callable[[float], Awaitable[None]],
        port: int,
        methods: Sequence[str] = (),
        implementation: Implementation = Implementation.GRPCIO,
    ) -> None:
        self._stop = stop
        self.port = port
        self.methods = tuple(methods)
        self.implementation = implementation

    async def stop(self, grace: float) -> None:
        """Refuse new RPCs, give running ones ``grace`` seconds, then cancel what remains."""
        await self._stop(grace)


def _gated(handler: grpc.RpcMethodHandler, gate: Gate) -> grpc.RpcMethodHandler:
    """A guarded method's handler behind the gate: the ``authorization`` metadata is checked
    before the request is even deserialised (gRPC hands the raw bytes here; they are parsed
    only once the caller is let in). Only unary-unary methods can be guarded this way; anything
    else is refused at registration rather than served unguarded."""
    behavior, deserialize = handler.unary_unary, handler.request_deserializer
    if behavior is None:
        raise TypeError("only unary-unary methods can be guarded; this one would be open")

    async def checked(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        metadata = context.invocation_metadata() or ()
        authorization = next(
            (v for k, v in metadata if k.lower() == "authorization" and isinstance(v, str)), ""
        )
        try:
            gate.check(authorization)
        except ModelyardError as exc:
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        request = deserialize(raw) if deserialize is not None else raw
        return await behavior(request, context)

    replaced: grpc.RpcMethodHandler = handler._replace(
        request_deserializer=None, unary_unary=checked
    )
    return replaced


class _Registrations:
    """The server as servicers see it while they register: records each method's full name and
    puts ``refuse_malformed``, on guarded methods the gate, and on inference methods the
    observer (outermost) around its handler."""

    def __init__(
        self, server: grpc.aio.Server | FastServer, gate: Gate, observer: Observer | None
    ) -> None:
        self._server = server
        self._gate = gate
        self._observer = observer if observer is not None and observer.active else None
        self.methods: list[str] = []

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of the full method name ``method`` as the server serves it."""
        handler = refuse_malformed(handler, method)
        if handler.response_serializer is not None:  # a handler may answer Encoded bytes
            handler = handler._replace(
                response_serializer=serializer_passing_encoded(handler.response_serializer)
            )
        if rpc_access(method) is Access.GUARDED:
            handler = _gated(handler, self._gate)
        if self._observer is not None:  # outermost, so it sees the calls the others refuse
            handler = observed(handler, method, self._observer)
        return handler

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_WrappedGeneric(h, self) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.methods.extend(f"/{service}/{name}" for name in handlers)
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped
    """A servicer's generic handler with each method's handler wrapped as registered ones are
    (once per method). gRPC consults it only for methods without a registered handler."""

    def __init__(self, inner: grpc.GenericRpcHandler, registrations: _Registrations) -> None:
        self._inner = inner
        self._registrations = registrations
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = cast(str, handler_call_details.method)
        found = self._wrapped.get(method)
        if found is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            found = self._wrapped[method] = self._registrations.wrap(method, handler)
        return found


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
    implementation: Implementation = DEFAULT_IMPLEMENTATION,
) -> GrpcServer:
    """Serve ``inference.GRPCInferenceService`` (and ``extra_servicers``) on ``host:port``.

    ``port`` 0 picks a free port. Messages larger than ``max_message_bytes`` in either direction
    are refused by gRPC with RESOURCE_EXHAUSTED. Guarded methods need ``management_token`` (and
    ``management``); without them they answer PERMISSION_DENIED. Raises ListenError when the
    address cannot be bound. ``observer``: what sees each inference call end (metrics of
    refusals, access log, traces); None or inactive: no observing layer at all.
    ``implementation``: which HTTP/2 server carries it (the servicers are the same).
    """
    gate = Gate(management_token if management is not None else None)
    if implementation is Implementation.FAST:
        fast = FastServer(max_message_bytes)
        registrations = _Registrations(fast, gate, observer)
        _register(dataplane, cast(grpc.aio.Server, registrations), extra_servicers, management)
        return await _start_fast(fast, host, port, registrations.methods)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Two servers on one port would split the traffic between them silently.
            ("grpc.so_reuseport", 0),
        ],
    )
    registrations = _Registrations(server, gate, observer)
    _register(dataplane, cast(grpc.aio.Server, registrations), extra_servicers, management)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ListenError(Protocol.GRPC, host, port, _bind_reason(host, port)) from exc
    if bound == 0:  # older grpc versions report failure this way instead of raising
        raise ListenError(Protocol.GRPC, host, port, _bind_reason(host, port))
    await server.start()
    return GrpcServer(server.stop, bound, registrations.methods, Implementation.GRPCIO)


def _register(
    dataplane: DataPlane,
    server: grpc.aio.Server,
    extra_servicers: Sequence[Callable[[grpc.aio.Server], None]],
    management: Management | None,
) -> None:
    KServeServicer(dataplane, management).add_to_server(server)
    for add in extra_servicers:
        add(server)


async def _start_fast(fast: FastServer, host: str, port: int, methods: list[str]) -> GrpcServer:
    loop = asyncio.get_running_loop()
    connections: set[Connection] = set()
    try:
        listener = await loop.create_server(
            server_factory(fast, fast.limits, connections), host, port, backlog=1024
        )
    except OSError as exc:
        # In the OS's words, as for grpcio's server (uvloop rewords them).
        raise ListenError(Protocol.GRPC, host, port, _bind_reason(host, port)) from exc
    bound = int(listener.sockets[0].getsockname()[1])

    async def stop(grace: float) -> None:
        listener.close()
        for connection in list(connections):
            connection.goaway()
        running = set(fast.running)
        if running:
            _, late = await asyncio.wait(running, timeout=max(grace, 0.0))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for connection in list(connections):
            connection.close()

    return GrpcServer(stop, bound, methods, Implementation.FAST)


def _bind_reason(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, in the OS's words (gRPC's own error does not say)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return "the address is in use or invalid"
