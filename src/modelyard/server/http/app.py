"""The ASGI application: TF Serving and KServe v2 REST routes over one data plane, and the
management routes behind the management gate.

Every route that ``modelyard.management.access`` does not list as open gets the gate in front
of its handler (``_Gated``): a route added later is guarded until someone lists it as open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.errors import Internal, ModelyardError, Unauthenticated
from modelyard.management import Management
from modelyard.management.access import Access, Gate, route_access
from modelyard.metrics.server_metrics import CONTENT_TYPE
from modelyard.observability import calls
from modelyard.observability.boundary import Observer
from modelyard.server.dataplane import DataPlane
from modelyard.server.http import extensions, kserve, management, status, tfserving, ui
from modelyard.server.http.common import error_response
from modelyard.server.http.deadline import InferenceCalls
from modelyard.server.http.lean import LeanInference
from modelyard.server.http.observe import CountedInferenceCalls, ObservedCalls
from modelyard.server.http.status import StatusSource

log = logging.getLogger(__name__)


async def _on_modelyard_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelyardError)
    return error_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    # The router's own 404 (no route) and 405 (wrong method), in the protocols' JSON error
    # shape instead of Starlette's plain text.
    assert isinstance(exc, HTTPException)
    calls.note_status(exc.status_code)  # the refusal's reason, for metrics and the access log
    return JSONResponse(
        {"error": f"{exc.detail}: {request.method} {request.url.path}"},
        status_code=exc.status_code,
        headers=exc.headers,
    )


class _AnswerBugs:
    """An exception no route handled (a bug, never the client's fault) is logged with its
    traceback and answered 500 in the protocol's error shape; the connection stays open.

    Starlette's own handler for ``Exception`` answers too, but then re-raises to the server,
    which logs it again and closes the connection, so a keep-alive client's *next* request
    failed with "server disconnected". This pure ASGI middleware sits inside that handler.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, send_tracked)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half a response is out: only closing the connection can say more
            response = error_response(Internal(f"internal error: {type(exc).__name__}: {exc}"))
            await response(scope, receive, send)


class _Gated:
    """A route's ASGI app behind the management gate: the caller's ``Authorization`` header is
    checked before the handler runs (before the body is even read); a refusal is answered
    here, in the protocols' error shape (401 with ``WWW-Authenticate: Bearer``, or 403)."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self._app = app
        self._gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._gate.check(Headers(scope=scope).get("authorization", ""))
        except ModelyardError as exc:
            response = error_response(exc)
            if isinstance(exc, Unauthenticated):
                response.headers["www-authenticate"] = 'Bearer realm="modelyard management"'
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class _RememberingRouter(Router):
    """Starlette's router, remembering which route a path fully matched: a request to a path
    seen before goes straight to its route instead of trying each route's pattern in turn (up
    to 20 regular expressions per inference call, about 10 % of the front end's CPU for a tiny
    model; issue 18). A full match depends only on the scope's type, method, path and root
    path, and the routes do not change after start-up, so the answer is the one the walk would
    give; anything else (no match, a partial match answered 405, a redirect) takes the walk.
    At most ``LIMIT`` paths are kept (a client sending endless distinct paths resets it)."""

    LIMIT = 4096

    def __init__(self, routes: list[BaseRoute]) -> None:
        super().__init__(routes)
        self._found: dict[tuple[str, str, str], tuple[BaseRoute, Scope]] = {}

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        key = (scope["method"], scope["path"], scope.get("root_path", ""))
        found = self._found.get(key)
        if found is None:
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    if len(self._found) >= self.LIMIT:
                        self._found.clear()
                    found = self._found[key] = (route, child_scope)
                    break  # the walk's answer too: it takes the first full match
            if found is None:
                await super().app(scope, receive, send)
                return
        route, child_scope = found
        if "router" not in scope:
            scope["router"] = self
        scope["route"] = route
        scope.update(child_scope)  # as the walk does (a Mount's root path too, not only a Route's)
        scope["path_params"] = dict(child_scope["path_params"])  # the request's own copy
        await route.handle(scope, receive, send)


def gate_routes(routes: list[BaseRoute], gate: Gate) -> list[BaseRoute]:
    """``routes`` with the gate in front of every route that is not open for all its methods.

    Only plain ``Route``s can be classified; anything else (a Mount, a WebSocket route) is a
    programming error here, refused at start-up rather than served unguarded."""
    for route in routes:
        if not isinstance(route, Route):
            raise TypeError(f"cannot classify route {route!r}; add it as a Route")
        methods = route.methods or {"*"}  # no methods: every method, so never open
        if any(route_access(m, route.path) is Access.GUARDED for m in methods):
            route.app = _Gated(route.app, gate)
    return routes


def _metrics_endpoint(dataplane: DataPlane) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        if dataplane.metrics is None:
            return Response("metrics are off\n", status_code=404, media_type="text/plain")
        return Response(dataplane.metrics.exposition(), media_type=CONTENT_TYPE)

    return metrics


def _middleware(dataplane: DataPlane, observer: Observer | None) -> list[Middleware]:
    """Inference calls get their REST deadline and are cancelled when the client goes away;
    the observing layer, outermost, sees every inference call once, whatever answers it. When
    the observer only counts, one layer inside ``_AnswerBugs`` does both (``observe``)."""
    if observer is None or not observer.active:
        return [Middleware(_AnswerBugs), Middleware(InferenceCalls, policy=dataplane.deadlines)]
    if not observer.wants_status:
        return [
            Middleware(_AnswerBugs),
            Middleware(CountedInferenceCalls, policy=dataplane.deadlines, observer=observer),
        ]
    return [
        Middleware(ObservedCalls, observer=observer),
        Middleware(_AnswerBugs),
        Middleware(InferenceCalls, policy=dataplane.deadlines),
    ]


class RestApp(Starlette):
    """The Starlette application with the lean way in for inference calls in front of its
    middleware stack (``modelyard.server.http.lean``; None: every request takes the stack)."""

    lean: LeanInference | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lean = self.lean
        if lean is None:
            await super().__call__(scope, receive, send)
        else:
            await lean(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's own entry: what the lean way in does not take."""
        await super().__call__(scope, receive, send)


LEAN = True
"""Whether ``build_app`` puts the lean way in in front (tests compare both ways)."""

_HOT_ROUTES = (
    "/v1/models/{path:path}",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
)


def build_app(
    dataplane: DataPlane,
    *,
    max_request_bytes: int,
    status_source: StatusSource | None = None,
    manager: Management | None = None,
    management_token: str | None = None,
    observer: Observer | None = None,
) -> Starlette:
    """The REST routes. The management routes are always there: without ``management_token``
    (or without ``manager``) they answer 403 with how to turn them on. ``observer``: what sees
    each inference call end (None or inactive: no observing layer)."""
    routes: list[BaseRoute] = [
        Route("/metrics", _metrics_endpoint(dataplane), methods=["GET"]),
        *ui.routes(dataplane),
        *tfserving.routes(dataplane, max_request_bytes=max_request_bytes),
        *extensions.routes(dataplane),  # before kserve's: /v2/models/stats is not a model
        *kserve.routes(dataplane, max_request_bytes=max_request_bytes),
        *(status.routes(status_source) if status_source is not None else []),
        *management.routes(manager),
    ]
    gate = Gate(management_token if manager is not None else None)
    app = RestApp(
        middleware=_middleware(dataplane, observer),
        exception_handlers={
            ModelyardError: _on_modelyard_error,
            HTTPException: _on_http_exception,
        },
    )
    app.router = _RememberingRouter(gate_routes(routes, gate))
    observed = observer is not None and observer.active and observer.wants_status
    # The lean way in answers without the gate: only while every route it serves is open.
    hot_open = all(route_access("POST", path) is Access.OPEN for path in _HOT_ROUTES)
    if LEAN and not observed and hot_open:
        app.lean = LeanInference(
            app.stack, dataplane, max_request_bytes=max_request_bytes, observer=observer
        )
    return app
