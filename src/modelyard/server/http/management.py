"""The management REST API: Triton/KServe's repository extension and modelyard's own changes.

    POST /v2/repository/index                                   list models, versions, states
    POST /v2/repository/models/{m}/load     {"parameters": {"config": "<model entry JSON>"}}
    POST /v2/repository/models/{m}/unload
    POST /modelyard/v1/models/{m}/versions/{v}/move     {"from": "sim0", "to": "sim2"}
    POST /modelyard/v1/replan
    PUT  /modelyard/v1/models/{m}/labels/{label}       {"version": 2}

Who may call them is not decided here: none of these routes is open
(``modelyard.management.access``), so ``build_app`` puts the management gate in front of each.
Off unless the server has a management token (403 with how to turn it on); with one, 401
without ``Authorization: Bearer <token>``. A load whose base_path is outside the model roots is
403 naming the roots; a change that does not fit is 507 with the planner's explanation; either
way nothing changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.errors import InvalidArgument, PermissionDenied
from modelyard.lifecycle.placement import Move
from modelyard.management import Management
from modelyard.management.access import OFF_MESSAGE
from modelyard.management.index import IndexRow
from modelyard.management.requests import model_entry
from modelyard.server.dataplane import ModelRef
from modelyard.server.http.common import JSONResponse, parse_json, read_body

MANAGEMENT_BODY_LIMIT = 1024 * 1024
Handler = Callable[[Request], Awaitable[Response]]


def routes(management: Management | None) -> list[Route]:
    """The management routes (always there; without ``management`` they answer 403)."""

    def on(handler: Callable[[Request, Management], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            if management is None:
                raise PermissionDenied(OFF_MESSAGE)
            return await handler(request, management)

        return endpoint

    return [
        Route("/v2/repository/index", on(_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", on(_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", on(_unload), methods=["POST"]),
        Route("/modelyard/v1/models/{model}/versions/{version}/move", on(_move), methods=["POST"]),
        Route("/modelyard/v1/replan", on(_replan), methods=["POST"]),
        Route("/modelyard/v1/models/{model}/labels/{label}", on(_label), methods=["PUT"]),
    ]


async def _body(request: Request, required: bool = False) -> dict[str, Any]:
    raw = await read_body(request, MANAGEMENT_BODY_LIMIT)
    if not raw.strip():
        if required:
            raise InvalidArgument("the request body is empty; expected a JSON object")
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


async def _index(request: Request, management: Management) -> Response:
    body = await _body(request)
    rows = management.index()
    if body.get("ready"):
        rows = [r for r in rows if r.ready]
    return JSONResponse([index_row_json(r) for r in rows])


async def _load(request: Request, management: Management) -> Response:
    body = await _body(request)
    entry = model_entry((body.get("parameters") or {}).get("config"))
    rows = await management.load(request.path_params["model"], entry)
    versions = [index_row_json(r) for r in rows]
    return JSONResponse({"model": request.path_params["model"], "versions": versions})


async def _unload(request: Request, management: Management) -> Response:
    await _body(request)
    await management.unload(request.path_params["model"])
    return JSONResponse({"model": request.path_params["model"], "state": "UNAVAILABLE"})


async def _move(request: Request, management: Management) -> Response:
    body = await _body(request, required=True)
    source, target = body.get("from"), body.get("to")
    if not isinstance(source, str) or not isinstance(target, str):
        raise InvalidArgument('expected {"from": "<device>", "to": "<device>"}')
    version = ModelRef.parse_version(request.path_params["version"])
    await management.move(request.path_params["model"], version, source, target)
    return JSONResponse({"model": request.path_params["model"], "version": version,
                         "from": source, "to": target})  # fmt: skip


async def _replan(request: Request, management: Management) -> Response:
    await _body(request)
    moves = await management.replan()
    return JSONResponse({"moves": [move_json(m) for m in moves]})


async def _label(request: Request, management: Management) -> Response:
    body = await _body(request, required=True)
    version = body.get("version")
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise InvalidArgument('expected {"version": <positive integer>}')
    ModelRef.check_version(version)
    name, label = request.path_params["model"], request.path_params["label"]
    await management.set_label(name, label, version)
    return JSONResponse({"model": name, "label": label, "version": version})


def index_row_json(row: IndexRow) -> dict[str, Any]:
    """Triton's JSON for one index row: a version row carries ``version`` (a string, as Triton
    sends it) and modelyard's ``devices``; a model row has neither."""
    if row.version is None:
        return {"name": row.name, "state": row.state.value, "reason": row.reason}
    return {"name": row.name, "version": str(row.version), "state": row.state.value,
            "reason": row.reason, "devices": list(row.devices)}  # fmt: skip


def move_json(move: Move) -> dict[str, Any]:
    """One re-plan move as ``POST /modelyard/v1/replan`` answers it."""
    return {"model": move.key.model, "version": move.key.version,
            "from": move.source, "to": move.target}  # fmt: skip
