"""Traces of inference calls, exported over OTLP/HTTP (OpenTelemetry). Off unless an endpoint
is given (``--otlp-endpoint URL``); OpenTelemetry is then imported, never otherwise.

One trace per call, parented on the caller's W3C ``traceparent`` (an HTTP header, or gRPC
metadata) when it sends one:

- ``modelyard.request`` (kind SERVER): the whole call, arrival to answer; attributes
  ``modelyard.protocol``, ``modelyard.model``, ``modelyard.version``, ``modelyard.status``;
- ``modelyard.queue``: the wait in the model's batcher (only for a batched model);
- ``modelyard.worker``: from handing the request (or its batch) to the device's worker process
  until its answer came back; attributes ``modelyard.device`` and ``modelyard.batch_size``;
- ``modelyard.compute`` (a child of ``modelyard.worker``): the model's call, as long as the
  worker measured it (``RequestClock.compute_ns``), when a worker reports its times; attributes
  ``modelyard.compute_input_ns`` and ``modelyard.compute_output_ns`` (decoding the request's
  tensors, encoding the answer's). The worker reports durations, not times: the span sits
  after the input's decoding, with the transport to and from the worker split evenly around
  the three (its length is measured, its place within the worker span is not).

The spans are made when the call ends, from the phases its clock recorded, so tracing adds no
work while a request is in flight; the exporter sends batches from its own thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from modelyard.deadlines import Phase
from modelyard.errors import BackendMissing, ConfigError
from modelyard.observability.calls import Call

log = logging.getLogger(__name__)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for ``endpoint``: given as is when it has a path, else with
    the standard ``/v1/traces`` added (``http://collector:4318`` -> ``.../v1/traces``)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--otlp-endpoint {endpoint!r} is not an http(s) URL; expected e.g. "
            "http://localhost:4318 (the OTLP/HTTP port of a collector)"
        )
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class Tracer:
    """Makes the spans of ended calls and exports them. ``close`` flushes what is pending."""

    def __init__(self, endpoint: str, *, service_name: str = "modelyard") -> None:
        """Raises ConfigError for an endpoint that is not an http(s) URL, BackendMissing (with
        the install hint) when OpenTelemetry is not installed."""
        url = traces_url(endpoint)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise BackendMissing(
                "--otlp-endpoint needs OpenTelemetry: pip install 'modelyard[tracing]' "
                f"(missing {exc.name})"
            ) from exc
        self.url = url
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=url), schedule_delay_millis=500
        )
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("modelyard")
        self._propagator = TraceContextTextMapPropagator()
        self._server_kind = SpanKind.SERVER

    def record(
        self, call: Call, end_wall_ns: int, end_mono: float, carrier: Mapping[str, str]
    ) -> None:
        """Make and end the spans of ``call``, which ended at ``end_wall_ns`` (epoch ns), that
        is ``end_mono`` (``time.monotonic()``); its parent is the ``traceparent`` in
        ``carrier``, if any."""
        wall = _Wall(end_mono, end_wall_ns)  # the call's monotonic marks, as epoch ns
        from opentelemetry import trace

        parent = self._propagator.extract(carrier=dict(carrier)) if carrier else None
        attributes: dict[str, Any] = {
            "modelyard.protocol": call.protocol.value,
            "modelyard.method": call.method,
            "modelyard.status": call.status,
        }
        if call.model:
            attributes["modelyard.model"] = call.model
        if call.version:
            attributes["modelyard.version"] = call.version
        request = self._tracer.start_span(
            "modelyard.request",
            context=parent,
            kind=self._server_kind,
            attributes=attributes,
            start_time=wall.ns(call.started),
        )
        clock = call.clock
        if clock is not None:
            inside = trace.set_span_in_context(request)
            marks = clock.marks
            for index, (phase, at) in enumerate(marks):
                until = marks[index + 1][1] if index + 1 < len(marks) else None
                end_ns = wall.ns(until) if until is not None else end_wall_ns
                if phase is Phase.BATCH_QUEUE:
                    span = self._tracer.start_span(
                        "modelyard.queue", context=inside, start_time=wall.ns(at)
                    )
                    span.end(end_time=end_ns)
                elif phase is Phase.DEVICE:
                    rows = clock.batch.rows if clock.batch is not None else call.rows
                    worker = self._tracer.start_span(
                        "modelyard.worker",
                        context=inside,
                        start_time=wall.ns(at),
                        attributes={"modelyard.device": clock.device, "modelyard.batch_size": rows},
                    )
                    times = clock.batch.compute_ns if clock.batch is not None else clock.compute_ns
                    if len(times) == 3:
                        within = trace.set_span_in_context(worker)
                        self._compute(within, wall.ns(at), end_ns, times)
                    worker.end(end_time=end_ns)
        request.end(end_time=end_wall_ns)

    def _compute(self, worker: Any, start_ns: int, end_ns: int, times: Sequence[int]) -> None:
        """The ``modelyard.compute`` span in the context ``worker`` (the worker span's, which
        runs ``start_ns`` to ``end_ns``), from the worker's (input, infer, output) ns."""
        decode, infer, encode = times
        transport = max(0, end_ns - start_ns - decode - infer - encode)
        begin = min(end_ns, start_ns + transport // 2 + decode)
        span = self._tracer.start_span(
            "modelyard.compute",
            context=worker,
            start_time=begin,
            attributes={
                "modelyard.compute_input_ns": decode,
                "modelyard.compute_output_ns": encode,
            },
        )
        span.end(end_time=min(end_ns, begin + infer))

    def close(self) -> None:
        """Export what is pending (bounded by the exporter's timeout) and stop."""
        try:
            self._provider.shutdown()
        except Exception:  # the collector is gone: traces are best effort
            log.warning("could not flush traces to %s", self.url, exc_info=True)


class _Wall:
    """Turns ``time.monotonic()`` readings of a call into epoch nanoseconds (spans need wall
    time), anchored at one reading of both clocks, so the phases line up with the span."""

    __slots__ = ("_mono", "_wall_ns")

    def __init__(self, mono: float, wall_ns: int) -> None:
        self._mono = mono
        self._wall_ns = wall_ns

    def ns(self, mono: float) -> int:
        return self._wall_ns + int((mono - self._mono) * 1e9)
