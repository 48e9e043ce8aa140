"""KServe v2 / Open Inference Protocol REST routes over the ``DataPlane``.

Health (``/v2/health/live``, ``/v2/health/ready``), server metadata (``/v2``), model metadata
and readiness (``/v2/models/{m}[/versions/{v}][/ready]``) and inference
(``POST /v2/models/{m}[/versions/{v}]/infer``, JSON tensors and the binary tensor extension).
Wire encoding lives in ``kserve_codec``; these handlers only read the request, call the data
plane and answer.

Health endpoints answer 200 when true and 503 otherwise (tritonclient checks for 200). Errors
are ``{"error": "..."}`` with the status from ``error_response``; an unexpected exception is
logged and answered 500, the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelyard.errors import Internal, ModelyardError
from modelyard.observability.calls import KSERVE_REST_INDEX
from modelyard.server.dataplane import DataPlane, ModelMetadata, ModelRef
from modelyard.server.http import kserve_codec as codec
from modelyard.server.http import offload
from modelyard.server.http.common import JSONResponse, error_response, read_body
from modelyard.tensors import TensorSpec

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def routes(dataplane: DataPlane, *, max_request_bytes: int) -> list[BaseRoute]:
    """The KServe v2 REST routes; request bodies over ``max_request_bytes`` get 413."""
    api = KServeApi(dataplane, max_request_bytes)
    model = "/v2/models/{model}"
    version = model + "/versions/{version}"
    return [
        Route("/v2/health/live", _guard(api.live), methods=["GET"]),
        Route("/v2/health/ready", _guard(api.ready), methods=["GET"]),
        Route("/v2", _guard(api.server_metadata), methods=["GET"]),
        Route(model, _guard(api.model_metadata), methods=["GET"]),
        Route(version, _guard(api.model_metadata), methods=["GET"]),
        Route(model + "/ready", _guard(api.model_ready), methods=["GET"]),
        Route(version + "/ready", _guard(api.model_ready), methods=["GET"]),
        Route(model + "/infer", _guard(api.infer), methods=["POST"]),
        Route(version + "/infer", _guard(api.infer), methods=["POST"]),
    ]


def _guard(handler: Handler) -> Handler:
    """Answer every failure in the protocol's error shape instead of escaping the handler."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ModelyardError as exc:
            return error_response(exc)
        except Exception as exc:  # a bug: log it, answer 500, keep serving
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(Internal(f"internal error: {type(exc).__name__}: {exc}"))

    return guarded


class KServeApi:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self._dataplane = dataplane
        self._limit = max_request_bytes

    async def live(self, request: Request) -> Response:
        return _health(self._dataplane.live(), "the server is not live")

    async def ready(self, request: Request) -> Response:
        return _health(self._dataplane.ready(), "the server is not ready")

    async def server_metadata(self, request: Request) -> Response:
        dp = self._dataplane
        return JSONResponse(
            {"name": dp.server_name, "version": dp.version, "extensions": list(dp.extensions)}
        )

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(metadata_json(self._dataplane.metadata(_ref(request))))

    async def model_ready(self, request: Request) -> Response:
        ref = _ref(request)
        if self._dataplane.model_ready(ref):
            return Response(status_code=200)
        which = ref.name if ref.version is None else f"{ref.name} version {ref.version}"
        return JSONResponse({"error": f"model {which} is not ready"}, status_code=503)

    async def infer(self, request: Request) -> Response:
        ref = _ref(request)
        body = await read_body(request, self._limit)
        headers = request.headers
        content, json_length = await self.answer(
            ref, body, headers.get("content-encoding"), headers.get(codec.HEADER_LENGTH)
        )
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={codec.HEADER_LENGTH: str(json_length)},
        )

    async def answer(
        self, ref: ModelRef, body: bytes, encoding: str | None, header_length_value: str | None
    ) -> tuple[bytes, int | None]:
        """The answer to the inference request ``body`` (its ``Content-Encoding`` and
        ``Inference-Header-Content-Length`` headers: ``encoding``, ``header_length_value``):
        the response body, and its JSON header's length when it has a binary section (else
        None). A ModelyardError for anything the client gets an error for. Both ways in call
        this (the Starlette route and ``modelyard.server.http.lean``)."""
        if encoding is not None and len(body) > offload.OFF_LOOP_BYTES // 8:
            # zlib lets go of the GIL while it inflates, so a thread keeps the loop free here.
            body = await asyncio.to_thread(codec.decompress, body, encoding, self._limit)
        else:
            body = codec.decompress(body, encoding, self._limit)
        header_length = codec.parse_header_length(header_length_value, len(body))
        # What costs is the JSON; a binary section is only copied once, quickly, on the loop.
        json_bytes = len(body) if header_length is None else header_length
        # The usual small body is decoded and answered on the loop without a coroutine for
        # either step (``offload.run``'s inline case): at one request in flight each is CPU on
        # the answer's path.
        if json_bytes <= offload.OFF_LOOP_BYTES:
            decoded = codec.decode_request(body, header_length)
        else:
            decoded = await offload.run(json_bytes, codec.decode_request, body, header_length)
        result = await self._dataplane.infer(
            ref, decoded.inputs, decoded.output_names, lane=KSERVE_REST_INDEX
        )
        binary = {name: decoded.wants_binary(name) for name in result.outputs}
        in_json = offload.JSON_EXPANSION * sum(
            a.nbytes for name, a in result.outputs.items() if not binary[name]
        )
        answer = (result.model, result.version, decoded.id, result.outputs, binary)
        try:
            if in_json <= offload.OFF_LOOP_BYTES:
                return codec.encode_response(*answer)
            return await offload.run(in_json, codec.encode_response, *answer)
        except ModelyardError as exc:  # the model ran: the data plane counted it (a success)
            exc.counted = True  # once only
            raise


def metadata_json(metadata: ModelMetadata) -> dict[str, object]:
    """Model metadata as KServe v2 shows it: versions as strings, shapes with -1."""
    return {
        "name": metadata.name,
        "versions": [str(v) for v in metadata.versions],
        "platform": metadata.platform,
        "inputs": [_tensor_json(spec) for spec in metadata.signature.inputs],
        "outputs": [_tensor_json(spec) for spec in metadata.signature.outputs],
    }


def _tensor_json(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "datatype": spec.datatype.value, "shape": list(spec.shape)}


def _ref(request: Request) -> ModelRef:
    params = request.path_params
    version = params.get("version")
    return ModelRef(
        params["model"], None if version is None else ModelRef.parse_version(str(version))
    )


def _health(ok: bool, reason: str) -> Response:
    if ok:
        return Response(status_code=200)
    return JSONResponse({"error": reason}, status_code=503)
