"""How modelyard's errors become gRPC statuses, for every servicer on the gRPC port.

A handler raises ``ModelyardError``; ``rpc_errors`` aborts the call with ``GRPC_STATUS[code]``
and the error's message. Anything else is a bug: it is logged with its traceback and the client
gets INTERNAL, never a dropped connection or a stuck call.

A request whose bytes are not the method's protobuf message never reaches a handler: gRPC would
answer UNKNOWN and log an ERROR with a traceback for what is only a client's mistake.
``MalformedRequests`` (a server interceptor) answers it INVALID_ARGUMENT instead, on every
method of the port.
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
        @functools.wraps(handler)
        async def wrapper(self: _S, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await handler(self, request, context)
            except ModelyardError as exc:
                error: ModelyardError = exc
            except Exception as exc:
                log.exception("unexpected error in %s/%s", service, handler.__name__)
                error = Internal(f"internal error ({type(exc).__name__}); see the server log")
            # Outside the except blocks: abort raises, and that must not be caught above.
            calls.note_error(error)  # the call's failure reason, for metrics and access log
            await context.abort(GRPC_STATUS[error.code], error.message)

        return wrapper

    return decorate


class MalformedRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Answers a request that does not parse as its method's message with INVALID_ARGUMENT.

    Every method of this server is unary-unary. Its request deserializer is wrapped so that a
    parse failure yields a ``_Malformed`` value instead of raising inside gRPC, and its handler
    so that such a value aborts the call before the servicer sees it.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        replaced: grpc.RpcMethodHandler = handler._replace(
            request_deserializer=_lenient(handler.request_deserializer, method),
            unary_unary=_refusing_malformed(handler.unary_unary),
        )
        return replaced


@dataclass(frozen=True, slots=True)
class _Malformed:
    """What a request that did not parse is handed on as."""

    error: InvalidArgument


def _lenient(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
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
        if isinstance(request, _Malformed):
            calls.note_error(request.error)
            await context.abort(GRPC_STATUS[request.error.code], request.error.message)
        return await behavior(request, context)

    return call
