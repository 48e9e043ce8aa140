"""The lean way in for REST inference calls: one ASGI callable in front of Starlette.

At one request in flight the latency is the sum of the CPU on the critical path, and Starlette's
layers (its error middleware, ours, the exception middleware, the router, the route, a
``Request`` and a ``Response`` object, a coroutine frame each) cost about as much per call as
decoding and encoding a tiny model's request (issue 18). The hot calls

    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict     TF Serving predict
    POST /v2/models/{m}[/versions/{v}]/infer                   KServe v2 infer (JSON, binary)

are served here instead (``respond``): the body, read from ASGI ``receive`` or handed over whole
by the server's own protocol (``modelyard.server.http.entry``, which takes most hot calls before
any ASGI cycle exists), goes to the same functions the Starlette routes call
(``TFServingAPI.predict``, ``KServeApi.answer``), and the answer (or the error, through the one
mapping, ``common.error_response``) is returned as (status, headers, body): sent here as start +
body, written by the protocol in one write. What the middleware stack does for an inference call
is done here, by the same code:

* the REST deadline (``DeadlinePolicy.rest``: 504) and the cancellation of a call whose client
  went away (``deadline._Call``, ``InferenceCalls._run``'s rules);
* counting-only statistics: the adapters pass the protocol's lane to the data plane, which
  counts the call, and a call refused before the data plane counted it is counted here
  (``observe.count_refused``): nothing per call when nothing fails;
* a bug is logged and answered 500 in the protocol's error shape, the connection kept open
  (as ``_AnswerBugs``).

Everything else takes the Starlette stack unchanged: other routes and verbs (``:classify``,
``:regress``), paths that are not exactly one of the shapes above (the router answers them as it
always did), a ``root_path``, and every call when the observer wants each call's status (an
access log or traces: ``ObservedCalls``). Inference routes are open (no management gate);
``build_app`` makes no lean entry if that ever changes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard import deadlines
from modelyard.errors import Code, Internal, ModelyardError
from modelyard.observability.boundary import Observer
from modelyard.observability.calls import Lane
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.server.http import kserve_codec
from modelyard.server.http.common import check_body, error_response, receive_body
from modelyard.server.http.deadline import _Call
from modelyard.server.http.kserve import KServeApi
from modelyard.server.http.observe import KSERVE_LANE, TFSERVING_LANE, count_refused
from modelyard.server.http.tfserving import TFServingAPI, post_path

log = logging.getLogger(__name__)

_TFS_PREFIX = "/v1/models/"
_TFS_PREFIX_LENGTH = len(_TFS_PREFIX)
_HEADER_LENGTH = kserve_codec.HEADER_LENGTH.lower().encode("latin-1")
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


class LeanInference:
    """See the module docstring. ``app`` is the Starlette application's own entry, for every
    request this does not take; ``observer``: as ``build_app``'s (None or inactive: no
    counting; one that wants each call's status must not be given: such calls are observed on
    the Starlette stack)."""

    def __init__(
        self,
        app: ASGIApp,
        dataplane: DataPlane,
        *,
        max_request_bytes: int,
        observer: Observer | None,
    ) -> None:
        assert observer is None or not observer.wants_status
        self._app = app
        self._dataplane = dataplane
        self.limit = max_request_bytes
        self._tfserving = TFServingAPI(dataplane, max_request_bytes)
        self._kserve = KServeApi(dataplane, max_request_bytes)
        self._observer = observer if observer is not None and observer.active else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") == "POST" and scope["type"] == "http" and not scope.get("root_path"):
            lane = hot_lane(scope["path"])
            if lane is not None:
                await self._serve(scope, receive, send, lane)
                return
        await self._app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, lane: Lane) -> None:
        """One inference call through ASGI: cancelled when its client leaves (``_Call``), the
        answer sent as a start and a body message (which the server's protocol writes as one,
        ``transport.CoalescingTransport``)."""
        call = _Call(receive, send)
        try:
            try:
                status, headers, body = await self.respond(
                    lane, scope["path"], scope["headers"], call.receive, b""
                )
            except asyncio.CancelledError:
                if call.dropped and call.task.uncancel() == 0:
                    return  # the client is gone: its queued work was dropped, nothing to answer
                raise  # cancelled from outside (server stopping)
            call.started = True  # never cancelled from here on
            await call.send({"type": "http.response.start", "status": status, "headers": headers})
            await call.send({"type": "http.response.body", "body": body})
        finally:
            call.finish()

    async def respond(
        self,
        lane: Lane,
        path: str,
        headers: list[tuple[bytes, bytes]],
        receive: Receive | None,
        body: bytes,
    ) -> Answer:
        """The answer to one inference call on ``path`` (a ``hot_lane`` path; ``headers``: the
        request's, names in lower case): counted under ``lane`` when counting, under its REST
        deadline; a bug is logged and answered 500. The body is read from ``receive`` when it
        is given, else it is ``body``, already whole (the protocol's own entry,
        ``modelyard.server.http.entry``), refused (413) the same way when over the limit.
        Cancellation (the client left, the server stops) propagates, after the call's end is
        counted."""
        # The answer's own steps are written out here, in the bug handler's ``try``, rather than
        # in a coroutine of their own: at one request in flight each layer is CPU on its path.
        given = None
        try:
            # Inside the bug handler: a policy that fails is a bug too (500), as on the stack.
            given = deadlines.give(self._dataplane.deadlines.rest(time.monotonic()))
            declared = encoding = header_length = None
            for name, value in headers:  # the first of each, as Starlette's Headers.get
                if name == b"content-length":
                    declared = value.decode("latin-1") if declared is None else declared
                elif name == b"content-encoding":
                    encoding = value.decode("latin-1") if encoding is None else encoding
                elif name == _HEADER_LENGTH and header_length is None:
                    header_length = value.decode("latin-1")
            try:
                if lane is TFSERVING_LANE:
                    ref = _predict_refs.get(path) or _predict_ref(path)
                else:
                    parts = path.split("/")
                    version = ModelRef.parse_version(parts[5]) if len(parts) == 7 else None
                    ref = ModelRef(parts[3], version)
                # The body whole (the protocol's entry): checked without a coroutine for it.
                if receive is None:
                    raw = check_body(declared, body, self.limit)
                else:
                    raw = await receive_body(declared, receive, self.limit)
                if lane is TFSERVING_LANE:
                    answer = await self._tfserving.predict(ref, raw)
                    return 200, _headers(answer, _JSON), answer
                answer, json_length = await self._kserve.answer(ref, raw, encoding, header_length)
                if json_length is None:
                    return 200, _headers(answer, _JSON), answer
                extra = (_HEADER_LENGTH, str(json_length).encode("latin-1"))
                return 200, [extra, *_headers(answer, _BINARY)], answer
            except ModelyardError as exc:
                if self._observer is not None and not exc.counted:  # refused before the plane
                    count_refused(self._observer, lane, path, exc.code)
                response = error_response(exc)
                return response.status_code, response.raw_headers, bytes(response.body)
        except Exception as exc:  # a bug, never the client's fault: 500, keep serving
            log.exception("unhandled error on POST %s", path)
            if self._observer is not None:
                count_refused(self._observer, lane, path, Code.INTERNAL)
            response = error_response(Internal(f"internal error: {type(exc).__name__}: {exc}"))
            return response.status_code, response.raw_headers, bytes(response.body)
        finally:
            if given is not None:
                deadlines.take_back(given)


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""An answer: status, the application's headers, body."""


def hot_lane(path: str) -> Lane | None:
    """The lane of an inference call on ``path`` that the lean way in takes (a POST), None
    for every other path (see the module docstring)."""
    if path.endswith(":predict") and path.startswith(_TFS_PREFIX):
        return TFSERVING_LANE
    if path.endswith("/infer") and path.startswith("/v2/models/"):
        parts = path.split("/")  # "", "v2", "models", m, [versions, v,] infer
        if (len(parts) == 5 and parts[3]) or (
            len(parts) == 7 and parts[4] == "versions" and parts[3] and parts[5]
        ):
            return KSERVE_LANE
    return None


_predict_refs: dict[str, ModelRef] = {}
"""The model each ``:predict`` path seen lately names (a path is parsed once, not per call)."""
_PREDICT_REFS = 256
"""At most this many paths are kept: beyond, the table starts again (a client sending many
different paths costs what every call cost before)."""


def _predict_ref(path: str) -> ModelRef:
    """The model a TF Serving ``:predict`` path names (``post_path``: NotFound, InvalidArgument
    as there), kept in ``_predict_refs``; any other verb is parsed per call."""
    ref, verb = post_path(path[_TFS_PREFIX_LENGTH:])
    if verb == ":predict":
        if len(_predict_refs) >= _PREDICT_REFS:
            _predict_refs.clear()
        _predict_refs[path] = ref
    return ref


def _headers(body: bytes, media_type: bytes) -> list[tuple[bytes, bytes]]:
    """A 200 answer's headers, as Starlette's ``Response`` writes them."""
    return [(b"content-length", str(len(body)).encode("latin-1")), (b"content-type", media_type)]
