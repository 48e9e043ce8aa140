"""The gRPC boundary of observed calls: a wrapper around every inference method's handler.

For ``inference.GRPCInferenceService/ModelInfer`` and TF Serving's ``Predict``, ``Classify`` and
``Regress`` it opens a ``Call`` (``modelyard.observability.calls``) with the protocol and the
model the request names, keeps it current while the handler runs, notes the status it ended
with, and hands it to the ``Observer``. ``server/grpc/server.py`` puts it outermost when each
method registers, so a request refused inside (a message that does not parse) is still seen
once. Other methods pass.

When the observer only counts, ``ModelInfer`` and ``Predict`` (the hot methods) are not wrapped
at all: their adapters pass their lane to the data plane, and a call refused before the data
plane counted it is counted by the error mapping (``status.rpc_errors`` calls ``refused``).
``Classify`` and ``Regress`` keep a counting wrapper (``_counted``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelyard.errors import ModelyardError
from modelyard.observability import calls
from modelyard.observability.boundary import TRACEPARENT, Observer
from modelyard.observability.calls import CURRENT, LANES, Call, Protocol

_INFERENCE: dict[str, Protocol] = {
    "/inference.GRPCInferenceService/ModelInfer": Protocol.KSERVE_GRPC,
    "/tensorflow.serving.PredictionService/Predict": Protocol.TFSERVING_GRPC,
    "/tensorflow.serving.PredictionService/Classify": Protocol.TFSERVING_GRPC,
    "/tensorflow.serving.PredictionService/Regress": Protocol.TFSERVING_GRPC,
}

_HOT = frozenset(
    ("/inference.GRPCInferenceService/ModelInfer", "/tensorflow.serving.PredictionService/Predict")
)
"""The inference methods whose adapters pass their lane to the data plane (``lane=``)."""

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def inference_protocol(service: str, name: str) -> Protocol | None:
    """The protocol of method ``name`` of a servicer whose errors ``status.rpc_errors(service)``
    maps (``service``: a service's full name, or a package's for several services), None when
    it is no inference method. Asked once per method, when it is decorated."""
    for method, protocol in _INFERENCE.items():
        if method.startswith(f"/{service}") and method.endswith(f"/{name}"):
            return protocol
    return None


def refused(servicer: Any, protocol: Protocol | None, request: Any, error: ModelyardError) -> None:
    """``error`` is about to answer a call to ``servicer``'s method of ``protocol``
    (``inference_protocol``; None: no inference method): note it on the current call when a
    boundary observes it (it counts the call when it ends), else, counting only on a hot
    method, count it here unless the data plane did (``error.counted``), against the version
    ``request`` names (the servicer's data plane's metrics; nothing without metrics)."""
    if protocol is None or CURRENT.get() is not None:
        calls.note_error(error)
        return
    if error.counted:
        return
    dataplane = getattr(servicer, "_dataplane", None)
    metrics = getattr(dataplane, "metrics", None)
    if metrics is not None:
        metrics.refused(protocol, error.code, *_named(request, protocol))


def observed(
    handler: grpc.RpcMethodHandler | None, method: str, observer: Observer
) -> grpc.RpcMethodHandler | None:
    """``handler`` of the full method name ``method``, observed when it is an inference method
    (unchanged otherwise). Applied once per method where handlers are registered; it must be
    the outermost wrapper to see every refusal."""
    protocol = _INFERENCE.get(method)
    if handler is None or protocol is None or handler.unary_unary is None:
        return handler
    wrapped: grpc.RpcMethodHandler = handler._replace(
        unary_unary=_observed(handler.unary_unary, protocol, method, observer)
    )
    return wrapped


def _observed(behavior: Behavior, protocol: Protocol, method: str, observer: Observer) -> Behavior:
    if not observer.wants_status:
        if method in _HOT:
            return behavior  # counted by the data plane and the error mapping (``refused``)
        return _counted(behavior, protocol, method, observer)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = Call(protocol, method)
        if observer.wants_bytes:
            record.bytes_in = _size(request)
        token = calls.begin(record)
        response: Any = None
        ended = "OK"
        try:
            response = await behavior(request, context)
            return response
        except BaseException:
            ended = "CANCELLED"  # unless an error was noted: the client or server went away
            raise
        finally:
            calls.end(token)
            # Counting only, and the data plane counted it (or nothing failed): nothing to do.
            if observer.wants_status or (record.code is not None and not record.counted):
                _finish(record, request, response, ended, context, observer)

    return call


def _counted(behavior: Behavior, protocol: Protocol, method: str, observer: Observer) -> Behavior:
    """``_observed`` when the observer only counts: no ``Call`` per call, but the protocol's
    preallocated ``Lane`` current while it runs (``modelyard.observability.calls``); a call the
    data plane counted (or that did not fail) needs nothing more. Only one refused before the
    data plane counted it has a ``Call`` when it ends (the error mapping made it), and is
    counted here. The context variable is set directly (on every call, the
    ``calls.begin``/``end`` wrappers cost more)."""
    lane = LANES[protocol]

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = CURRENT.set(lane)
        try:
            return await behavior(request, context)
        finally:
            ended = CURRENT.get()
            CURRENT.reset(token)
            # The lane (nothing failed) or its twin (the data plane counted the call): done.
            if isinstance(ended, Call) and ended.code is not None and not ended.counted:
                ended.method = method
                _finish(ended, request, None, "OK", context, observer)

    return call


def _finish(
    record: Call,
    request: Any,
    response: Any,
    ended: str,
    context: grpc.aio.ServicerContext,
    observer: Observer,
) -> None:
    record.status = record.code.value if record.code is not None else ended
    if observer.wants_bytes and response is not None:
        record.bytes_out = _size(response)
    if not record.model and observer.needs_names(record):
        record.model, record.version = _named(request, record.protocol)
    carrier = _carrier(context) if observer.tracer is not None else {}
    observer.finish(record, carrier)


def _named(request: Any, protocol: Protocol) -> tuple[str, str]:
    """The model and version a request names ("" where none; the request may be malformed)."""
    if protocol is Protocol.KSERVE_GRPC:
        return str(getattr(request, "model_name", "")), str(getattr(request, "model_version", ""))
    spec = getattr(request, "model_spec", None)
    if spec is None:
        return "", ""
    version = spec.version.value if spec.HasField("version") else None
    return str(spec.name), "" if version is None else str(version)


def _size(message: Any) -> int:
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


def _carrier(context: grpc.aio.ServicerContext) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in (TRACEPARENT, "tracestate") and isinstance(value, str):
            carrier[key] = value
    return carrier
