"""Unary gRPC over ``http2``'s connections: the gRPC listener that does not go through grpc.aio.

It serves the handlers the servicers register (``grpc.RpcMethodHandler`` values, through the
same ``add_generic_rpc_handlers`` / ``add_registered_method_handlers`` calls grpc's server
takes), so the servicers, the management gate, ``refuse_malformed`` and the observing wrapper
run unchanged. What a handler sees of the call is ``Context``: the metadata, ``abort``,
``set_code``/``set_details``, ``time_remaining`` (from ``grpc-timeout``), ``peer`` and
``cancelled``.

The wire is grpc's: statuses in trailers (``grpc-status``, percent-encoded ``grpc-message``),
a call past its ``grpc-timeout`` answered DEADLINE_EXCEEDED "Deadline Exceeded", an unknown
method UNIMPLEMENTED "Method not found!", a message over the limit RESOURCE_EXHAUSTED, gzip and
deflate requests decoded (answers are never compressed), another encoding UNIMPLEMENTED with
``grpc-accept-encoding``. Only unary-unary methods exist on modelyard's port; any other kind
answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import zlib
from collections.abc import Sequence
from types import CoroutineType
from typing import Any, NamedTuple

import grpc

from modelyard.server.grpc.h2wire import STATUS_200, Limits, Stream, literal
from modelyard.server.grpc.hotpath import Encoded
from modelyard.server.grpc.http2 import Connection

log = logging.getLogger(__name__)

_CONTENT_TYPE = literal(b"content-type", b"application/grpc")
_ACCEPT = literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
_HEAD = STATUS_200 + _CONTENT_TYPE + _ACCEPT
_TRAILERS_OK = literal(b"grpc-status", b"0")
_NOT_METADATA = frozenset(
    (b"te", b"content-type", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding")
)
_TIMEOUT_UNITS = {
    ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9
}  # fmt: skip


class _Status(Exception):
    """End the call with ``code`` and ``details`` (what ``Context.abort`` raises)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _CallDetails(NamedTuple):
    """What a generic handler is asked about (grpc's ``HandlerCallDetails``)."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class Context:
    """The servicer context of one call: the part of ``grpc.aio.ServicerContext`` that
    modelyard's handlers use."""

    __slots__ = (
        "_code", "_deadline", "_details", "_loop", "_metadata", "_peer", "_stream", "expired",
    )  # fmt: skip

    def __init__(
        self,
        metadata: tuple[tuple[str, str | bytes], ...],
        deadline: float | None,
        stream: Stream,
        peer: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """``deadline``: in ``loop.time()``, None without one."""
        self._metadata = metadata
        self._deadline = deadline
        self._loop = loop
        self._stream = stream
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.expired = False

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        raise _Status(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        pass  # modelyard's handlers send none; accepted so a servicer that does still works

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        pass

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._loop.time())

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return self._stream.reset or self.expired

    def done(self) -> bool:
        return self._stream.answered


def _percent(details: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, with bytes outside printable ASCII and ``%``
    percent-encoded."""
    raw = details.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def _trailers(code: grpc.StatusCode, details: str) -> bytes:
    block = literal(b"grpc-status", str(code.value[0]).encode())
    return block + literal(b"grpc-message", _percent(details)) if details else block


def _timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (None when malformed: no deadline, as grpc does)."""
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


class _Headers(NamedTuple):
    """What a request's header list says to the gRPC layer."""

    method: str
    """The full method name (``:path``)."""
    metadata: tuple[tuple[str, str | bytes], ...]
    timeout: float | None
    encoding: bytes
    too_large: bool
    refusal: bytes
    """Not a gRPC request (not a POST of application/grpc): the answer's header block."""


def _read_headers(fields: list[tuple[bytes, bytes]]) -> _Headers:
    path = b""
    method = b""
    content_type = b""
    encoding = b""
    timeout: float | None = None
    too_large = False
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in fields:
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b":too-large":
                too_large = True
        elif name in _NOT_METADATA:
            if name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = _timeout(value)
            elif name == b"grpc-encoding":
                encoding = value
        elif name[-4:] == b"-bin":
            with contextlib.suppress(ValueError):  # not base64: dropped, as grpc does
                metadata.append((name.decode("latin-1"), base64.b64decode(value + b"==")))
        else:
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
    refusal = b""
    if method != b"POST" or not content_type.startswith(b"application/grpc"):
        status = b"405" if method != b"POST" else b"415"
        refusal = literal(b":status", status) + _trailers(
            grpc.StatusCode.INTERNAL, "gRPC requests are POSTs of application/grpc"
        )
    full = path.decode("latin-1")
    return _Headers(full, tuple(metadata), timeout, encoding, too_large, refusal)


class FastServer:
    """The handlers of every registered method, and the application ``http2`` calls with
    each complete request."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.limits = Limits(max_message_bytes=max_message_bytes)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._known_headers: dict[int, tuple[list[tuple[bytes, bytes]], _Headers]] = {}
        self.running: set[asyncio.Task[None]] = set()

    # -- what servicers register with (as with grpc's server) --------------------------------

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def _lookup(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> Any:
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        details = _CallDetails(method, metadata)
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None

    # -- calls -------------------------------------------------------------------------------

    def __call__(self, connection: Connection, stream: Stream) -> None:
        """Start answering ``stream`` (its request is complete)."""
        fields = stream.headers
        # The header list of a repeated call is the same object each time (``HeaderDecoder``
        # remembers decoded blocks), so what it says is read once, not on every call.
        known = self._known_headers.get(id(fields))
        if known is not None and known[0] is fields:
            call = known[1]
        else:
            call = _read_headers(fields)
            if not call.too_large:  # (a fresh list each time: nothing to remember)
                if len(self._known_headers) >= 64:
                    self._known_headers.clear()
                self._known_headers[id(fields)] = (fields, call)
        if call.refusal:
            connection.answer(stream, b"", b"", call.refusal)
            connection.finished(stream)
            return
        loop = connection.loop or asyncio.get_running_loop()  # (a getpid() per call: see there)
        timeout = call.timeout
        deadline = None if timeout is None else loop.time() + timeout
        context = Context(call.metadata, deadline, stream, connection.peer, loop)
        task = loop.create_task(self._call(connection, stream, call, context))
        stream.task = task
        self.running.add(task)
        timer = None if deadline is None else loop.call_at(deadline, _expire, task, context)
        task.add_done_callback(self._ended(connection, stream, context, timer))

    def _ended(
        self,
        connection: Connection,
        stream: Stream,
        context: Context,
        timer: asyncio.TimerHandle | None,
    ) -> Any:
        """What runs when a call's task is done, however it ended (even cancelled before it
        started, when none of its own code ran): the stream is let go, and answered if its
        handler could not (DEADLINE_EXCEEDED past its deadline, CANCELLED otherwise; nothing
        goes out on a stream the client reset)."""

        def ended(task: asyncio.Task[None]) -> None:
            self.running.discard(task)
            if timer is not None:
                timer.cancel()
            if not stream.answered:
                if context.expired:
                    trailers = _trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
                else:
                    trailers = _trailers(grpc.StatusCode.CANCELLED, "the server is stopping")
                connection.answer(stream, b"", b"", _HEAD + trailers)
            connection.finished(stream)

        return ended

    async def _call(
        self,
        connection: Connection,
        stream: Stream,
        call: _Headers,
        context: Context,
    ) -> None:
        head = b""
        data = b""
        method = call.method
        try:
            handler = self._lookup(method, call.metadata)
            if handler is None:
                raise _Status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            behavior = handler.unary_unary
            if behavior is None:
                raise _Status(grpc.StatusCode.UNIMPLEMENTED, "only unary calls are served")
            raw = self._message(stream, call.encoding, call.too_large)
            deserialize = handler.request_deserializer
            request = deserialize(raw) if deserialize is not None else raw
            response = behavior(request, context)
            if type(response) is CoroutineType or inspect.isawaitable(response):
                response = await response
            if context._code is not None and context._code is not grpc.StatusCode.OK:
                raise _Status(context._code, context._details)
            if type(response) is Encoded:  # serialised by the handler already
                message = response
            else:
                serialize = handler.response_serializer
                message = serialize(response) if serialize is not None else response
            if len(message) > self.max_message_bytes:
                raise _Status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Sent message larger than max ({len(message)} vs. {self.max_message_bytes})",
                )
            head, data = _HEAD, b"\x00" + len(message).to_bytes(4, "big") + message
            trailers = _TRAILERS_OK
        except _Status as status:
            trailers = _trailers(status.code, status.details)
        except NotImplementedError as exc:  # a generated servicer's default method
            code = context._code or grpc.StatusCode.UNIMPLEMENTED
            trailers = _trailers(code, context._details or str(exc))
        except Exception as exc:
            log.exception("unexpected error in %s", method)
            trailers = _trailers(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
        if head:
            connection.answer(stream, head, data, trailers)
        else:
            connection.answer(stream, b"", b"", _HEAD + trailers)

    def _message(self, stream: Stream, encoding: bytes, too_large: bool) -> bytes:
        """The request's one message, decompressed."""
        limit = self.max_message_bytes
        body = stream.body
        size = len(body)
        if (
            not too_large
            and size >= 5
            and body[0] == 0
            and int.from_bytes(body[1:5], "big") == size - 5 <= limit
        ):  # the common message: uncompressed, its length right and within the limit
            return bytes(memoryview(body)[5:])
        if too_large or (len(body) >= 5 and int.from_bytes(body[1:5], "big") > limit):
            size = int.from_bytes(body[1:5], "big") if len(body) >= 5 else len(body)
            raise _Status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({size} vs. {limit})"
                if not too_large
                else f"Received message larger than max (more than {limit} bytes)",
            )
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            raise _Status(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request body is not one length-prefixed gRPC message",
            )
        raw = bytes(body[5:])
        if body[0] == 0:
            return raw
        if encoding in (b"gzip", b"deflate"):
            decoder = zlib.decompressobj(31 if encoding == b"gzip" else 15)
            try:
                plain = decoder.decompress(raw, limit + 1)
            except zlib.error as exc:
                raise _Status(
                    grpc.StatusCode.INTERNAL, f"the {encoding.decode()} message is corrupt"
                ) from exc
            if len(plain) > limit or decoder.unconsumed_tail:
                raise _Status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max (more than {limit} bytes decompressed)",
                )
            return plain
        if not encoding or encoding == b"identity":
            raise _Status(grpc.StatusCode.INTERNAL, "a compressed message without grpc-encoding")
        raise _Status(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Compression algorithm '{encoding.decode('latin-1')}' is not supported; "
            "accepted: identity, deflate, gzip",
        )


def _expire(task: asyncio.Task[None], context: Context) -> None:
    context.expired = True
    task.cancel()
