"""What ``GET /metrics`` shows: request counts and latencies per model, model states, devices.

Label values come only from the server's own names (configured models, versions, devices,
error codes), never from what a client typed, so a client cannot grow the label set.
Thread/async safety: prometheus_client's metric objects are thread-safe; the collectors read
the registry and plan, which the event loop owns, so scrapes run on the loop too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelyard.errors import Code
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.lifecycle.states import ModelState
from modelyard.planner import Plan

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Inference latencies span tens of microseconds (tiny models on CPU) to seconds (large ones).
_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class ServerMetrics:
    """The metrics of one server. ``observe_*`` are called by the data plane per request."""

    def __init__(
        self, registry: ModelRegistry, plan: Callable[[], Plan | None] = lambda: None
    ) -> None:
        """``plan`` returns the plan in force when scraped: run-time loads and moves change it."""
        self.prometheus = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "modelyard_inference_requests",
            "Inference requests by model, version and outcome (OK or the error code).",
            ["model", "version", "outcome"],
            registry=self.prometheus,
        )
        self._rejected = Counter(
            "modelyard_inference_rejected",
            "Inference requests refused before a model version was found, by error code.",
            ["code"],
            registry=self.prometheus,
        )
        self._latency = Histogram(
            "modelyard_inference_duration_seconds",
            "Time from validated request to outputs, per model (successful requests).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.prometheus,
        )
        self.prometheus.register(_StateCollector(registry, plan))

    def observe_ok(self, model: str, version: int, seconds: float) -> None:
        self._requests.labels(model, str(version), "OK").inc()
        self._latency.labels(model).observe(seconds)

    def observe_error(self, model: str | None, version: int | None, code: Code) -> None:
        if model is None or version is None:
            self._rejected.labels(code.value).inc()
        else:
            self._requests.labels(model, str(version), code.value).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.prometheus)


class _StateCollector(Collector):
    """Model version states and device memory, read at scrape time."""

    def __init__(self, registry: ModelRegistry, plan: Callable[[], Plan | None]) -> None:
        self._registry = registry
        self._plan = plan

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # values are read at scrape time; nothing to pre-declare

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily(
            "modelyard_model_version_state",
            "1 for the state each model version is in.",
            labels=["model", "version", "state"],
        )
        for entry in self._registry.entries():
            for state in ModelState:
                states.add_metric(
                    [entry.key.model, str(entry.key.version), state.value],
                    1.0 if entry.state is state else 0.0,
                )
        yield states
        plan = self._plan()
        if plan is None:
            return
        capacity = GaugeMetricFamily(
            "modelyard_device_capacity_bytes",
            "Device capacity the planner uses.",
            labels=["device"],
        )
        planned = GaugeMetricFamily(
            "modelyard_device_planned_bytes",
            "Bytes of the models the plan puts on the device.",
            labels=["device"],
        )
        for usage in plan.devices:
            capacity.add_metric([usage.device.name], usage.device.capacity_bytes)
            planned.add_metric([usage.device.name], usage.used_bytes)
        yield capacity
        yield planned
