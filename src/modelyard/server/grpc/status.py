"""How modelyard's errors become gRPC statuses, for every servicer on the gRPC port.

A handler raises ``ModelyardError``; ``rpc_errors`` aborts the call with ``GRPC_STATUS[code]``
and the error's message. Anything else is a bug: it is logged with its traceback and the client
gets INTERNAL, never a dropped connection or a stuck call.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from modelyard.errors import Code, Internal, ModelyardError

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
            await context.abort(GRPC_STATUS[error.code], error.message)

        return wrapper

    return decorate
