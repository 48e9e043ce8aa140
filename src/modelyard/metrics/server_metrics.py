"""What ``GET /metrics`` shows, and the per-request hooks that feed it.

Names follow Triton where the meaning is the same, so Triton's Grafana dashboards work
(``nv_inference_request_success``, ``nv_inference_request_failure{reason}``,
``nv_inference_count``, ``nv_inference_exec_count``, ``nv_inference_request_duration_us``,
``nv_inference_queue_duration_us``, ``nv_inference_compute_input_duration_us``,
``nv_inference_compute_infer_duration_us``, ``nv_inference_compute_output_duration_us``,
``nv_inference_pending_request_count``, ``nv_gpu_memory_total_bytes``,
``nv_gpu_memory_used_bytes``; labels ``model`` and ``version``). As in Triton, the ``*_us``
durations are counters of accumulated microseconds (divide their rate by the request rate for
a mean). The compute ones are the worker's own times (see ``metrics.extensions``); the
transport to and from the worker is only in ``nv_inference_request_duration_us``.
``reason`` is modelyard's error code (``INVALID_ARGUMENT``, ``NOT_FOUND``,
``RESOURCE_EXHAUSTED``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``...), where Triton
has four coarser reasons; the sum over reasons means the same. What only modelyard has is
``modelyard_*``: histograms of request, queue and compute time and of batch sizes, requests per
protocol, requests refused before any model was found, the plan, planned and measured bytes,
worker restarts and version states.

Label values come only from the server's own names (served models, versions, devices, error
codes, protocols), never from what a client typed, so a client cannot grow the label set.
Async safety: the hooks and the collectors run on the server's event loop (scrapes too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from modelyard.deadlines import RequestClock
from modelyard.errors import Code, ModelyardError
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.lifecycle.states import ModelState
from modelyard.metrics.stats import Histogram, StatsBook, VersionStats
from modelyard.observability import calls
from modelyard.planner import Plan

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

StatusReader = Callable[[], Mapping[str, Any]]
"""Returns the status document (``modelyard.server.http.status``): devices, workers, bytes."""


class ServerMetrics:
    """The statistics and metrics of one server. The data plane calls ``observe_ok`` and
    ``observe_error`` once per inference request; a protocol boundary calls ``call_ended``
    once per call (for the requests refused before the data plane counted them)."""

    def __init__(
        self,
        registry: ModelRegistry,
        plan: Callable[[], Plan | None] = lambda: None,
        status: StatusReader | None = None,
    ) -> None:
        """``plan`` returns the plan in force when scraped (run-time loads and moves change
        it); ``status`` the status document (workers and measured bytes), None without one."""
        self.book = StatsBook()
        self.observe_ok = self.book.ok
        # The book's successes not yet folded (``StatsBook.note``): the data plane appends a
        # hot path's counting-only request here itself.
        self.pending = self.book.pending
        self._registry = registry
        self.prometheus = CollectorRegistry(auto_describe=True)
        self.prometheus.register(_TrafficCollector(self.book, registry))
        self.prometheus.register(_StateCollector(registry, plan, status))

    # -- hooks (the hot path: keep them to a look-up and some additions) ---------------------

    observe_ok: Callable[[VersionKey, RequestClock, int, int], None]
    """A request on ``key`` succeeded; ``clock`` holds its phases, ``rows`` its dim 0, the last
    argument its lane (-1: the current call's). It is ``StatsBook.ok`` itself (set per
    instance): one Python call per request, not two."""

    def observe_error(
        self,
        key: VersionKey | None,
        code: Code,
        clock: RequestClock | None,
        named: tuple[str, int | None, str | None] | None = None,
        lane: int = -1,
    ) -> None:
        """A request failed with ``code``: on ``key``, or (None) before a version was found;
        ``named`` is then the (model, version, label) it named, counted against that version
        when it exists and as a refusal otherwise. Counted on lane ``lane``
        (``calls.PROTOCOL_LABELS``), or without one (-1) on the current call's protocol; a
        current call learns that it was counted, as ``observe_ok`` tells it. The caller marks
        the error ``counted`` (``ModelyardError.counted``) for the boundary that answers it."""
        call = calls.CURRENT.get()
        if lane >= 0:
            protocol = calls.PROTOCOL_LABELS[lane]
        else:
            protocol = call.protocol._value_ if call is not None else "in_process"
        if key is None and named is not None:
            key = self._existing(*named)
            clock = None
        if isinstance(call, calls.Call):
            call.counted = True
            call.clock = clock
            if key is not None:
                call.model, call.version = key.model, str(key.version)
        elif call is not None:
            calls.CURRENT.set(call.done)  # counted: the boundary and error mapping leave it
        if key is None:
            self.book.reject(protocol, code)
        else:
            self.book.observe(key, clock, 0, protocol, code)

    def refused(self, protocol: calls.Protocol, code: Code, model: str, version: str) -> None:
        """A call on ``protocol`` was refused with ``code`` before the data plane counted it
        (a body that did not decode, a message that did not parse, a bug): counted against
        the served version it named (``model``, ``version``: what the request named, "" where
        nothing), as a refusal when it names none. For the hot paths' boundaries, which have
        no ``Call`` (``calls``' module docstring)."""
        call = calls.Call(protocol)
        call.code = code
        call.model, call.version = model, version
        self.call_ended(call)

    def call_ended(self, call: calls.Call) -> None:
        """A protocol boundary's call is over: count it if it failed before the data plane
        counted it (a body that did not decode, an unknown model, a wrong path)."""
        if call.counted or call.code is None:
            return
        call.counted = True
        version = int(call.version) if call.version.isdigit() else None
        key = self._existing(call.model, version, None) if call.model else None
        if key is None:
            self.book.reject(call.protocol.value, call.code)
        else:
            call.version = str(key.version)
            self.book.observe(key, None, 0, call.protocol.value, call.code)

    def _existing(self, model: str, version: int | None, label: str | None) -> VersionKey | None:
        """The served version a request named, None when it names none that exists."""
        try:
            return self._registry.resolve(model, version, label).key
        except (ModelyardError, ValueError):
            return None

    def exposition(self) -> bytes:
        """The Prometheus text: Triton's counters first, then everything else."""
        return triton_counters(self.book) + generate_latest(self.prometheus)


_TRITON_COUNTERS: tuple[tuple[str, str, Callable[[VersionStats], float]], ...] = (
    ("nv_inference_request_success", "Successful inference requests.", lambda s: s.success_count),
    ("nv_inference_count", "Inferences performed (a batch of 8 rows counts 8).",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Model executions (a batch counts 1).",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us",
     "Accumulated request duration, arrival to answer, in microseconds.",
     lambda s: (s.success_ns + s.fail_ns) / 1000.0),
    ("nv_inference_queue_duration_us",
     "Accumulated time requests waited in a batcher's queue, in microseconds.",
     lambda s: s.queue_ns / 1000.0),
    ("nv_inference_compute_input_duration_us",
     "Accumulated time the device's worker took to decode requests' input tensors, in "
     "microseconds.",
     lambda s: s.input_ns / 1000.0),
    ("nv_inference_compute_infer_duration_us",
     "Accumulated time in the model's call, as the device's worker measured it, in "
     "microseconds.",
     lambda s: s.infer_ns / 1000.0),
    ("nv_inference_compute_output_duration_us",
     "Accumulated time the device's worker took to encode output tensors, in microseconds.",
     lambda s: s.output_ns / 1000.0),
)  # fmt: skip


def triton_counters(book: StatsBook) -> bytes:
    """Triton's counters in the Prometheus text format, named exactly as Triton names them.

    Written here rather than through prometheus_client, which renames every counter to
    ``<name>_total``: Triton's dashboards query ``nv_inference_request_success``."""
    versions = list(book.items())
    lines: list[str] = []
    for name, doc, value in _TRITON_COUNTERS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        lines += [f"{name}{{{_text_labels(key)}}} {float(value(s))!r}" for key, s in versions]
        if name == "nv_inference_request_success":
            failure = "nv_inference_request_failure"
            lines += [
                f"# HELP {failure} Failed inference requests, by reason (modelyard's error code).",
                f"# TYPE {failure} counter",
            ]
            for key, stats in versions:
                for code, n in sorted(stats.failures.items(), key=lambda item: item[0].value):
                    labels = f'{_text_labels(key)},reason="{code.value}"'
                    lines.append(f"{failure}{{{labels}}} {float(n)!r}")
    return ("\n".join(lines) + "\n").encode()


def _text_labels(key: VersionKey) -> str:
    return f'model="{_escape(key.model)}",version="{key.version}"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: VersionKey) -> list[str]:
    return [key.model, str(key.version)]


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add_histogram(family: HistogramMetricFamily, values: list[str], hist: Histogram) -> None:
    family.add_metric(values, hist.cumulative(), hist.sum)


class _TrafficCollector(Collector):
    """Counters and histograms of requests, read from the ``StatsBook`` at scrape time."""

    def __init__(self, book: StatsBook, registry: ModelRegistry) -> None:
        self._book = book
        self._registry = registry

    def describe(self) -> Iterable[Metric]:
        return []  # read at scrape time; nothing to pre-declare

    def collect(self) -> Iterator[Metric]:
        mv = ["model", "version"]
        requests = CounterMetricFamily(
            "modelyard_inference_requests",
            "Inference requests by model, version, protocol and outcome (OK or the error code).",
            labels=[*mv, "protocol", "outcome"],
        )
        rejected = CounterMetricFamily(
            "modelyard_inference_rejected",
            "Inference requests refused before any served model version was found.",
            labels=["protocol", "reason"],
        )
        latency = _histogram(
            "modelyard_request_duration_seconds",
            "Successful requests: arrival to answer.",
            mv,
        )
        queued = _histogram(
            "modelyard_queue_duration_seconds", "Time in a batcher's queue per request.", mv
        )
        computed = _histogram(
            "modelyard_compute_duration_seconds",
            "Time in the model's call per request (compute_infer), as its worker measured it.",
            mv,
        )
        batch = _histogram(
            "modelyard_batch_size", "Rows per model execution (1 per unbatched request).", mv
        )
        for key, stats in self._book.items():
            values = _labels(key)
            for (protocol, outcome), n in sorted(stats.outcomes.items()):
                requests.add_metric([*values, protocol, outcome], n)
            _add_histogram(latency, values, stats.request_duration)
            _add_histogram(queued, values, stats.queue_duration)
            _add_histogram(computed, values, stats.infer_duration)
            _add_histogram(batch, values, stats.batch_size)
        for (protocol, code), n in sorted(self._book.rejected.items(), key=str):
            rejected.add_metric([protocol, code.value], n)
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Requests in flight: queued in a batcher or on a device's worker.",
            labels=mv,
        )
        for entry in self._registry.entries():
            if entry.state is ModelState.AVAILABLE:
                pending.add_metric(_labels(entry.key), sum(r.in_flight for r in entry.replicas))
        yield from (pending, requests, rejected, latency, queued, computed, batch)


class _StateCollector(Collector):
    """Model version states, the plan, device memory and workers, read at scrape time."""

    def __init__(
        self, registry: ModelRegistry, plan: Callable[[], Plan | None], status: StatusReader | None
    ) -> None:
        self._registry = registry
        self._plan = plan
        self._status = status

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
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
        if plan is not None:
            yield from _plan_metrics(plan)
        if self._status is not None:
            yield from _status_metrics(self._status())


_Family = CounterMetricFamily | GaugeMetricFamily
_FamilySpec = tuple[type[_Family], str, str, tuple[str, ...]]

_PLAN_FAMILIES: tuple[_FamilySpec, ...] = (
    (GaugeMetricFamily, "modelyard_device_capacity_bytes", "Device capacity the planner uses.",
     ("device",)),
    (GaugeMetricFamily, "modelyard_device_planned_bytes",
     "Bytes of the models the plan puts on the device.", ("device",)),
    (GaugeMetricFamily, "nv_gpu_memory_total_bytes",
     "GPU memory the server may use (the device's capacity in the plan).", ("gpu_uuid",)),
    (GaugeMetricFamily, "modelyard_model_planned_bytes",
     "Bytes the plan reserves for a model version on each device it is on.",
     ("model", "version", "device")),
)  # fmt: skip

_STATUS_FAMILIES: tuple[_FamilySpec, ...] = (
    (CounterMetricFamily, "modelyard_worker_restarts",
     "Times each device's worker was restarted.", ("device",)),
    (GaugeMetricFamily, "modelyard_device_measured_bytes",
     "Bytes the device's worker measured for the models it holds.", ("device",)),
    (GaugeMetricFamily, "nv_gpu_memory_used_bytes",
     "GPU memory the models on the device were measured to use.", ("gpu_uuid",)),
    (GaugeMetricFamily, "modelyard_model_measured_bytes",
     "Bytes a model version was measured to use on a device, after it loaded.",
     ("model", "version", "device")),
)  # fmt: skip


def _families(specs: tuple[_FamilySpec, ...]) -> list[_Family]:
    """Fresh metric families, one per (kind, name, help, labels), in order."""
    return [kind(name, doc, labels=list(labels)) for kind, name, doc, labels in specs]


def _plan_metrics(plan: Plan) -> Iterator[Metric]:
    capacity, planned, gpu_total, placed = _families(_PLAN_FAMILIES)
    for usage in plan.devices:
        capacity.add_metric([usage.device.name], usage.device.capacity_bytes)
        planned.add_metric([usage.device.name], usage.used_bytes)
        if usage.device.target.is_cuda:
            gpu_total.add_metric([usage.device.name], usage.device.capacity_bytes)
    for assignment in plan.assignments:
        for device in assignment.devices:
            placed.add_metric([*_labels(assignment.key), device], assignment.bytes)
    yield from (capacity, planned, gpu_total, placed)


def _status_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    restarts, measured, gpu_used, per_model = _families(_STATUS_FAMILIES)
    totals: dict[str, int] = {}
    for model in status.get("models", []):
        for device, value in (model.get("measured_bytes") or {}).items():
            if value is None:
                continue
            per_model.add_metric([model["model"], str(model["version"]), device], value)
            totals[device] = totals.get(device, 0) + int(value)
    for device in status.get("devices", []):
        name = device["name"]
        restarts.add_metric([name], device.get("restarts") or 0)
        measured.add_metric([name], totals.get(name, 0))
        if device.get("kind") == "cuda":
            gpu_used.add_metric([name], totals.get(name, 0))
    yield from (restarts, measured, gpu_used, per_model)
