"""What both REST adapters share: bounded body reading, fast JSON, and error responses.

Error bodies are ``{"error": "<message>"}`` in both TF Serving's and KServe v2's REST APIs, with
the HTTP status from ``modelyard.errors.HTTP_STATUS``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from modelyard.config.sizes import format_size
from modelyard.errors import (
    HTTP_STATUS,
    DoesNotFit,
    InvalidArgument,
    ModelyardError,
    ResourceExhausted,
)
from modelyard.observability import calls
from modelyard.server.defaults import DEFAULT_MAX_REQUEST_BYTES as DEFAULT_MAX_REQUEST_BYTES


class JSONResponse(Response):
    """A JSON response serialised with orjson (numpy arrays allowed)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode_json(content)


def encode_json(content: Any) -> bytes:
    """``content`` as JSON (numpy arrays allowed), as every JSON answer is written."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(exc: ModelyardError) -> JSONResponse:
    calls.note_error(exc)  # the call's failure reason, for metrics and the access log
    return JSONResponse({"error": exc.message}, status_code=status_for(exc))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (see ``receive_body``)."""
    return await receive_body(request.headers.get("content-length"), request.receive, limit)


async def receive_body(declared: str | None, receive: Receive, limit: int) -> bytes:
    """The request body from ASGI ``receive``, refusing more than ``limit`` bytes before
    reading them all; ``declared``: its Content-Length header (None without one).

    A declared Content-Length over the limit is refused without reading; a chunked body is
    counted as it streams and refused as soon as it passes the limit. A client that goes away
    before its body arrived whole gets ClientClosed (a 400 that nobody reads). Messages of
    other types are skipped, as Starlette's ``Request.stream`` does.
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        # The whole body in one message (every small request): no list, no join.
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise _too_large(len(body), limit)
        return body
    chunks = []
    size = 0
    while True:
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif kind == "http.disconnect":
            # The client's business, not a server error: no traceback in the log.
            raise ClientClosed(
                f"the client closed the connection after sending {size} bytes of the request body"
            )
        message = await receive()


def check_body(declared: str | None, body: bytes, limit: int) -> bytes:
    """``body`` (read whole already, or up to where it passed ``limit``), refused as
    ``receive_body`` refuses it: a declared Content-Length over the limit, or more bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    if len(body) > limit:
        raise _too_large(len(body), limit)
    return body


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``; InvalidArgument with the parser's reason otherwise."""
    if not body:
        raise InvalidArgument("the request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None


def _too_large(size: int, limit: int) -> ResourceExhausted:
    # 413 is the status users expect here; ResourceExhausted alone would map to 503.
    return BodyTooLarge(
        f"request body of {format_size(size)} ({size} bytes) is larger than the limit of "
        f"{format_size(limit)} ({limit} bytes); raise it with --max-request-bytes"
    )


class BodyTooLarge(ResourceExhausted):
    """A request body over the configured limit (HTTP 413)."""


class ClientClosed(InvalidArgument):
    """The client closed the connection before its request body arrived whole. Answered like
    any client mistake (uvicorn drops the answer: nobody is left to read it), never logged as a
    server error."""


def status_for(exc: ModelyardError) -> int:
    if isinstance(exc, DoesNotFit):
        return 507  # a change the plan has no room for, not a passing overload (503)
    return 413 if isinstance(exc, BodyTooLarge) else HTTP_STATUS[exc.code]
