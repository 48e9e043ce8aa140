"""What a protocol boundary does when an inference call ends: count it if nothing under it
did, write its access line, and export its trace. Each part is optional; with none of them on
the boundaries are not installed at all (``Observer.active``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from modelyard.observability.calls import Call
from modelyard.observability.logs import AccessLog
from modelyard.observability.tracing import Tracer

TRACEPARENT = "traceparent"
"""The W3C trace context header (and gRPC metadata key) a caller parents its trace with."""


class Observer:
    """``count``: counts a call the data plane did not (``ServerMetrics.call_ended``);
    ``access``: the access log; ``tracer``: the traces. Any of them may be None."""

    def __init__(
        self,
        count: Callable[[Call], None] | None = None,
        access: AccessLog | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.count = count
        self.access = access
        self.tracer = tracer
        # Plain attributes, read on every call: whether calls should note the status they
        # answered and their method (only the access log and traces show them; counts use the
        # error's code), and their bytes in and out (only the access log shows those).
        self.wants_status = access is not None or tracer is not None
        self.wants_bytes = access is not None

    @property
    def active(self) -> bool:
        return self.count is not None or self.access is not None or self.tracer is not None

    def needs_names(self, call: Call) -> bool:
        """Whether ``call`` should name the model and version its request named (read from the
        request by the boundary): when something shows them, or to count a refusal the data
        plane did not see against the version it named."""
        return (
            self.access is not None
            or self.tracer is not None
            or (call.code is not None and not call.counted)
        )

    def finish(self, call: Call, carrier: Mapping[str, str]) -> None:
        """``call`` was answered (or abandoned) now. ``carrier``: the trace context the caller
        sent (``traceparent``, and ``tracestate``), empty if none."""
        now = time.monotonic()
        if self.count is not None:
            self.count(call)
        if self.access is not None:
            self.access.write(call, now - call.started)
        if self.tracer is not None:
            self.tracer.record(call, time.time_ns(), now, carrier)
