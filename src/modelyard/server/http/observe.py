"""The REST boundary of observed calls: a pure ASGI middleware around every inference route.

For each inference call (``POST .../infer``, ``:predict``, ``:classify``, ``:regress``) it opens
a ``Call`` (``modelyard.observability.calls``) with the protocol and the model the path names,
keeps it current while the routes run, notes the status answered (and the bytes, for the access
log), and hands it to the ``Observer`` once the answer is out. It is the outermost layer, so a
request refused anywhere under it (a body too large, JSON that does not parse, a model TF
Serving's path names that is not served) is still seen once. Other routes pass untouched.

The lean way in (``lean.py``) takes the hot inference calls before this stack when the observer
only counts: it sets nothing per call and counts its refusals with ``count_refused``.

When the observer only counts (no access log, no traces), ``CountedInferenceCalls`` takes the
place of both this middleware and ``InferenceCalls``: one layer instead of two on every request
(each ASGI layer is a coroutine frame and an ``is_inference`` test), and no ``Call``: it makes
its protocol's preallocated ``Lane`` current, and a ``Call`` exists only for a call refused
before the data plane counted it (``modelyard.observability.calls``). It runs inside
``_AnswerBugs``, so it notes the 500 that middleware answers for a bug itself.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.deadlines import DeadlinePolicy
from modelyard.errors import Code
from modelyard.observability import calls
from modelyard.observability.boundary import TRACEPARENT, Observer
from modelyard.observability.calls import CURRENT, LANES, Call, Lane, Protocol
from modelyard.server.http.deadline import InferenceCalls, _Call, is_inference


class ObservedCalls:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, observer: Observer) -> None:
        self._app = app
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_inference(scope):
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        kserve = path.startswith("/v2/")
        call = Call(Protocol.KSERVE_REST if kserve else Protocol.TFSERVING_REST, path)
        observer = self._observer
        if not observer.wants_status:
            # Counting only: the failure's code comes from the error mapping, so the call's
            # messages need no wrappers, and a call the data plane counted needs nothing more.
            token = CURRENT.set(call)
            try:
                await self._app(scope, receive, send)
            finally:
                CURRENT.reset(token)
                if call.code is not None and not call.counted:
                    if not call.model:
                        call.model, call.version = _named(path, kserve)
                    observer.finish(call, {})
            return
        counting = observer.wants_bytes

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                call.bytes_in += len(message.get("body", b""))
            return message

        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                call.status = str(message["status"])
            elif counting and message["type"] == "http.response.body":
                call.bytes_out += len(message.get("body", b""))
            await send(message)

        token = calls.begin(call)
        try:
            # Bytes in are counted only for the access log: otherwise no wrapper on receive.
            await self._app(scope, receive_counted if counting else receive, send_noted)
        finally:
            calls.end(token)
            call.method = f"POST {path}"
            if not call.model and observer.needs_names(call):
                # Read from the path only when something shows it: the data plane names the
                # version of every request it counted.
                call.model, call.version = _named(path, kserve)
            observer.finish(call, _carrier(scope) if observer.tracer is not None else {})


class CountedInferenceCalls(InferenceCalls):
    """``InferenceCalls`` and a counting-only ``ObservedCalls`` in one layer (see the module
    docstring): the deadline and disconnect handling are ``InferenceCalls``'s, unchanged."""

    def __init__(self, app: ASGIApp, policy: DeadlinePolicy, observer: Observer) -> None:
        super().__init__(app, policy)
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_inference(scope):
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        lane = KSERVE_LANE if path.startswith("/v2/") else TFSERVING_LANE
        token = CURRENT.set(lane)
        call = _Call(receive, send)
        try:
            await self._run(scope, call)
        except Exception:
            # A bug: _AnswerBugs (outside) answers it 500 when no answer has started, which
            # notes INTERNAL on the call it sees; here that call is already over, so note it.
            if not call.started:
                calls.note_code(Code.INTERNAL)
            raise
        finally:
            ended = CURRENT.get()
            CURRENT.reset(token)
            finish_counted(self._observer, ended, path, lane is KSERVE_LANE)


def finish_counted(observer: Observer, ended: Call | Lane | None, path: str, kserve: bool) -> None:
    """The end of a counting-only call on ``path``: ``ended`` is what was current at its end.
    The lane (nothing failed) or its twin (the data plane counted the call) need nothing; a
    ``Call`` made for a refusal the data plane did not count is handed to ``observer``."""
    if isinstance(ended, Call) and ended.code is not None and not ended.counted:
        if not ended.model:
            ended.model, ended.version = _named(path, kserve)
        ended.method = path
        observer.finish(ended, {})


def count_refused(observer: Observer, lane: Lane, path: str, code: Code) -> None:
    """A call on ``path`` (a lean way in's, ``lean.py``: no ``Call``, nothing current) was
    refused with ``code`` before the data plane counted it: counted now, against the version
    the path names, by ``observer`` (counting only)."""
    call = Call(lane.protocol, path)
    call.code = code
    call.model, call.version = _named(path, lane is KSERVE_LANE)
    observer.finish(call, {})


KSERVE_LANE = LANES[Protocol.KSERVE_REST]
TFSERVING_LANE = LANES[Protocol.TFSERVING_REST]


def _named(path: str, kserve: bool) -> tuple[str, str]:
    """The model and version a path names ("" where it names none), read leniently: the path
    may be malformed (that is what the routes answer)."""
    if kserve:  # /v2/models/{m}[/versions/{v}]/infer
        parts = path.split("/")
        model = parts[3] if len(parts) > 3 else ""
        version = parts[5] if len(parts) > 6 and parts[4] == "versions" else ""
        return model, version
    # /v1/models/{m}[/versions/{v}|/labels/{l}]:verb
    rest = path[len("/v1/models/") :].rsplit(":", 1)[0] if path.startswith("/v1/models/") else ""
    parts = rest.split("/")
    version = parts[2] if len(parts) > 2 and parts[1] == "versions" else ""
    return parts[0], version


def _carrier(scope: Scope) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        if key in (TRACEPARENT, "tracestate"):
            carrier[key] = value.decode("latin-1")
    return carrier
