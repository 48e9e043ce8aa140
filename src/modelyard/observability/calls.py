"""One inference call as its protocol boundary sees it, from arrival to answer.

The REST middleware and the gRPC interceptor (``modelyard.server.http.observe``,
``modelyard.server.grpc.observe``) open a ``Call`` when an inference request arrives and make it
current (a context variable) while the call runs. The layers under it fill it in as they learn
things: the data plane the model version it ran on and that it counted the request
(``counted``), the error mapping the neutral code of a failure (``note_error``). When the call
ends the boundary has all it needs, in one place, for the three things that look at every call:
the count of a request refused before the data plane saw it, the access log line, and the trace.

Cost: one small object and a context variable set per call; nothing here allocates per phase.
Async safety: one call belongs to one task (asyncio copies the context into the tasks it
starts, so a batch's task sees the call of the request that started it: only ``counted``,
``model`` and ``version`` are written under a call, by the data plane, on the request's task).
"""

from __future__ import annotations

import contextvars
import enum
import itertools
import time

from modelyard.deadlines import RequestClock
from modelyard.errors import Code, ModelyardError


class Protocol(enum.Enum):
    """The API a call came in on (the ``protocol`` label of metrics and the access log)."""

    TFSERVING_REST = "tfserving_rest"
    KSERVE_REST = "kserve_rest"
    KSERVE_GRPC = "kserve_grpc"
    TFSERVING_GRPC = "tfserving_grpc"
    IN_PROCESS = "in_process"  # the data plane called directly (tests, embedding)


_ids = itertools.count(1)


class Call:
    """What is known of one inference call so far. Mutable; owned by its boundary.

    ``model``: the model name the request named (from its path or message; a client's text,
    so never a metric label unless the model is served); ``version``: the version it named, then
    the one it ran on. ``code``: the neutral error code when it failed (None: it succeeded or
    has not ended). ``clock``: the data plane's clock of the request (its phases), once it ran.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "clock",
        "code",
        "counted",
        "method",
        "model",
        "protocol",
        "protocol_label",
        "request_id",
        "rows",
        "started",
        "status",
        "version",
    )

    def __init__(self, protocol: Protocol, method: str = "") -> None:
        self.protocol = protocol
        # The label as a plain str: Enum.value is a Python-level descriptor, read per request.
        self.protocol_label: str = protocol._value_
        self.method = method  # the HTTP method and path, or the gRPC method's full name
        self.started = time.monotonic()
        self.request_id = next(_ids)
        self.model = ""
        self.version = ""
        self.code: Code | None = None
        self.counted = False
        self.clock: RequestClock | None = None
        self.status = ""  # the HTTP status or gRPC status name answered
        self.bytes_in = 0
        self.bytes_out = 0
        self.rows = 0  # the request's rows (dim 0), once the data plane ran it


CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "modelyard_call", default=None
)
"""The call this task serves. The boundaries ``set`` and ``reset`` it around a call, and the
hooks read it with ``get`` directly: on every request, a Python wrapper would cost more than
the look-up (``current``, ``begin`` and ``end`` say the same for other callers)."""

_CURRENT = CURRENT


def current() -> Call | None:
    """The call this task serves, None outside an observed call."""
    return _CURRENT.get()


def begin(call: Call) -> contextvars.Token[Call | None]:
    """Make ``call`` current for this task (and the tasks it starts); ``end`` with the token."""
    return _CURRENT.set(call)


def end(token: contextvars.Token[Call | None]) -> None:
    _CURRENT.reset(token)


_STATUS_CODE = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    413: Code.RESOURCE_EXHAUSTED,
    429: Code.RESOURCE_EXHAUSTED,
    501: Code.UNIMPLEMENTED,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


def note_status(status: int) -> None:
    """Record the code of an HTTP refusal that no modelyard error named (the router's own 404
    and 405): the code whose HTTP status it is (INTERNAL for another 5xx)."""
    call = _CURRENT.get()
    if call is not None and call.code is None and status >= 400:
        other = Code.INTERNAL if status >= 500 else Code.INVALID_ARGUMENT
        call.code = _STATUS_CODE.get(status, other)


def note_error(error: ModelyardError) -> None:
    """Record the code of the error a call is about to be answered with (the protocols' error
    mapping calls this once, where the error becomes a status)."""
    call = _CURRENT.get()
    if call is not None and call.code is None:
        call.code = error.code
