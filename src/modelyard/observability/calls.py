"""One inference call as its protocol boundary sees it, from arrival to answer.

Three ways, by what the server shows of each call and how hot the call's path is:

* **Counting only, on the hot paths** (statistics and metrics on, no access log, no traces:
  the default; REST ``:predict`` and ``/infer`` through the lean way in, gRPC ``ModelInfer``
  and ``Predict``). Nothing per call: no ``Call``, no context variable set, no wrapper. The
  adapter passes its protocol's lane index to ``DataPlane.infer`` (``lane=``), which counts
  the request under it, success or failure, and marks a failure's error ``counted``. A call
  refused before the data plane counted it is counted where its error is answered: the lean
  REST entry (``observe.count_refused``) and the gRPC error mapping (``rpc_errors``, through
  ``server/grpc/observe.refused``), each knowing its protocol without asking anything per call.
* **Counting only, elsewhere** (REST calls on the Starlette stack, gRPC ``Classify`` and
  ``Regress``). The boundary (``CountedInferenceCalls``, ``server/grpc/observe.py``'s counting
  wrapper) makes its protocol's ``Lane`` current: one object per protocol, made once at import,
  so a call costs no object of its own. The data plane counts the request into its version's
  statistics under the lane's protocol and makes the lane's ``done`` twin current (so nothing
  counts it again). Only a call that fails before the data plane counted it gets a ``Call``:
  the error mapping (``note_error``, ``note_status``) makes one, with the failure's code, and the
  boundary counts it when the call ends.
* **Observed** (an access log or traces): the boundary (``ObservedCalls``, the gRPC observing
  wrapper) opens a ``Call`` per call and makes it current while the call runs. The layers under
  it fill it in as they learn things: the data plane the model version it ran on and that it
  counted the request (``counted``), the error mapping the neutral code of a failure. When the
  call ends the boundary has all it needs, in one place, for the count of a request refused
  before the data plane saw it, the access log line, and the trace.

Async safety: one call belongs to one task (asyncio copies the context into the tasks it
starts, so a batch's task sees the call of the request that started it: only ``counted``,
``model`` and ``version`` are written under a call, by the data plane, on the request's task).
A lane is made current, and replaced by its twin or a ``Call``, in the request's own task (the
data plane's hooks and the error mapping run there), so the boundary reads what they set.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
import time
import weakref

from modelyard.deadlines import RequestClock
from modelyard.errors import Code, ModelyardError


class Protocol(enum.Enum):
    """The API a call came in on (the ``protocol`` label of metrics and the access log)."""

    TFSERVING_REST = "tfserving_rest"
    KSERVE_REST = "kserve_rest"
    KSERVE_GRPC = "kserve_grpc"
    TFSERVING_GRPC = "tfserving_grpc"
    IN_PROCESS = "in_process"  # the data plane called directly (tests, embedding)


PROTOCOL_LABELS: tuple[str, ...] = tuple(p.value for p in Protocol)
"""The protocols' labels by lane index (``Protocol``'s order): statistics count per index."""

_INDEX = {p: i for i, p in enumerate(Protocol)}

IN_PROCESS_INDEX = _INDEX[Protocol.IN_PROCESS]

# Lane indexes the hot paths' adapters pass to ``DataPlane.infer`` (``lane=``).
TFSERVING_REST_INDEX = _INDEX[Protocol.TFSERVING_REST]
KSERVE_REST_INDEX = _INDEX[Protocol.KSERVE_REST]
KSERVE_GRPC_INDEX = _INDEX[Protocol.KSERVE_GRPC]
TFSERVING_GRPC_INDEX = _INDEX[Protocol.TFSERVING_GRPC]

_ids = itertools.count(1)


class Lane:
    """A protocol's marker for counting-only calls (see the module docstring). Immutable in
    use; two per protocol, made at import: the lane, current while a call runs, and its
    ``done`` twin, made current by the data plane once it counted the call."""

    __slots__ = ("done", "index", "label", "protocol")

    full = False  # not a Call: nothing to fill in

    def __init__(self, protocol: Protocol, done: Lane | None = None) -> None:
        self.protocol = protocol
        self.index = _INDEX[protocol]
        self.label: str = protocol._value_
        self.done: Lane = done if done is not None else self


LANES: dict[Protocol, Lane] = {p: Lane(p, Lane(p)) for p in Protocol}
"""Each protocol's lane (its ``done`` twin is ``LANES[p].done``)."""


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
        "index",
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

    full = True  # the data plane fills it in (``Lane.full`` is False)

    def __init__(self, protocol: Protocol, method: str = "") -> None:
        self.protocol = protocol
        self.index = _INDEX[protocol]  # its protocol's lane index (statistics count per index)
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


CURRENT: contextvars.ContextVar[Call | Lane | None] = contextvars.ContextVar(
    "modelyard_call", default=None
)
"""The call this task serves (a ``Call``), or the lane of a counting-only call. The boundaries
``set`` and ``reset`` it around a call, and the hooks read it with ``get`` directly: on every
request, a Python wrapper would cost more than the look-up (``current``, ``begin`` and ``end``
say the same for other callers)."""

_CURRENT = CURRENT


def current() -> Call | None:
    """The call this task serves, None outside an observed call (or in a counting-only one
    that has not failed: it has no ``Call``)."""
    call = _CURRENT.get()
    return call if isinstance(call, Call) else None


_task_ids: weakref.WeakKeyDictionary[asyncio.Task[object], int] = weakref.WeakKeyDictionary()


def request_id() -> int | None:
    """The id of the request this task serves, for log lines: its ``Call``'s, or for a
    counting-only call (no ``Call``) one given to its task the first time a line asks; None
    outside an inference call. Not the access log's ids (there is none without a ``Call``)."""
    call = _CURRENT.get()
    if call is None:
        return None
    if isinstance(call, Call):
        return call.request_id
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop (a worker thread): no request of its own
        return None
    if task is None:
        return None
    found = _task_ids.get(task)
    if found is None:
        found = _task_ids[task] = next(_ids)
    return found


def begin(call: Call) -> contextvars.Token[Call | Lane | None]:
    """Make ``call`` current for this task (and the tasks it starts); ``end`` with the token."""
    return _CURRENT.set(call)


def end(token: contextvars.Token[Call | Lane | None]) -> None:
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
    if status >= 400:
        other = Code.INTERNAL if status >= 500 else Code.INVALID_ARGUMENT
        note_code(_STATUS_CODE.get(status, other))


def note_error(error: ModelyardError) -> None:
    """Record the code of the error a call is about to be answered with (the protocols' error
    mapping calls this once, where the error becomes a status)."""
    note_code(error.code)


def note_code(code: Code) -> None:
    """Record ``code`` as the current call's failure, unless one was recorded or (counting
    only) the data plane counted the call already. A counting-only call gets its ``Call`` here,
    in its own task, so its boundary finds it when the call ends."""
    call = _CURRENT.get()
    if call is None:
        return
    if isinstance(call, Call):
        if call.code is None:
            call.code = code
        return
    if call is call.done:
        return  # the data plane counted this call
    failed = Call(call.protocol)
    failed.code = code
    _CURRENT.set(failed)
