"""How modelyard's errors become gRPC statuses, for every servicer on the gRPC port.

A handler raises ``ModelyardError``; ``rpc_errors`` aborts the call with ``GRPC_STATUS[code]``
and the error's message. Anything else is a bug: it is logged with its traceback and the client
gets INTERNAL, never a dropped connection or a stuck call.

A request whose bytes are not the method's protobuf message never reaches a handler: gRPC would
answer UNKNOWN and log an ERROR with a traceback for what is only a client's mistake.
``refuse_malformed`` wraps each method handler when it is registered (``server.py`` does it for
every method of the port) so that such a request is answered INVALID_ARGUMENT instead. It is
applied once, at registration, rather than by a server interceptor: an interceptor runs as a
coroutine on every call, and two of them cost more per call than the whole KServe adapter.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from modelyard.errors import Code, Internal, InvalidArgument, ModelyardError
from modelyard.observability import calls
from modelyard.server.grpc.observe import inference_protocol, refused

log = logging.getLogger(__name__)

GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
}
"""The gRPC status for each neutral code (the codes are named after gRPC's, so 1:1)."""

_S = TypeVar("_S")
Handler = Callable[[_S, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def rpc_errors(service: str) -> Callable[[Handler[_S]], Handler[_S]]:
    """Decorate a servicer method of ``service`` so its errors become gRPC statuses."""

    def decorate(handler: Handler[_S]) -> Handler[_S]:
        protocol = inference_protocol(service, handler.__name__)

        @functools.wraps(handler)
        async def wrapper(self: _S, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if type(request) is _Malformed:
                    raise request.error
                return await handler(self, request, context)
            except ModelyardError as exc:
                error: ModelyardError = exc
            except Exception as exc:
                log.exception("unexpected error in %s/%s", service, handler.__name__)
                error = Internal(f"internal error ({type(exc).__name__}); see the server log")
            # Outside the except blocks: abort raises, and that must not be caught above.
            # The call's failure reason, for metrics and access log (counted here on a hot
            # method when nothing observes the call: no wrapper around it).
            refused(self, protocol, request, error)
            await context.abort(GRPC_STATUS[error.code], error.message)

        wrapper._modelyard_refuses_malformed = True  # type: ignore[attr-defined]
        return wrapper

    return decorate


def refuse_malformed(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` (of the full method name ``method``) answering a request that does not parse
    as its message with INVALID_ARGUMENT.

    Its request deserializer is wrapped so that a parse failure yields a ``_Malformed`` value
    instead of raising inside gRPC; a handler written with ``rpc_errors`` refuses that value
    itself, any other unary-unary handler is wrapped to refuse it before it runs. Handlers that
    are not unary-unary are returned unchanged.
    """
    if handler.unary_unary is None or handler.request_deserializer is None:
        return handler
    behavior = handler.unary_unary
    if not getattr(behavior, "_modelyard_refuses_malformed", False):
        behavior = _refusing_malformed(behavior)
    replaced: grpc.RpcMethodHandler = handler._replace(
        request_deserializer=lenient(handler.request_deserializer, method),
        unary_unary=behavior,
    )
    return replaced


@dataclass(frozen=True, slots=True)
class _Malformed:
    """What a request that did not parse is handed on as."""

    error: InvalidArgument


def lenient(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    """``deserialize`` returning a ``_Malformed`` value instead of raising."""

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # protobuf's DecodeError, or whatever a deserializer raises
            return _Malformed(
                InvalidArgument(
                    f"the request to {method} is not a valid protobuf message of its type "
                    f"({len(raw)} bytes): {exc}"
                )
            )

    return parse


def _refusing_malformed(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if type(request) is _Malformed:
            calls.note_error(request.error)
            await context.abort(GRPC_STATUS[request.error.code], request.error.message)
        return await behavior(request, context)

    return call
