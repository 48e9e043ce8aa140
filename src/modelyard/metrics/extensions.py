"""Triton's statistics and model configuration extensions, as JSON documents.

``statistics`` is what ``GET /v2/models[/{m}[/versions/{v}]]/stats`` answers and ``config``
what ``GET /v2/models/{m}[/versions/{v}]/config`` answers, in Triton's JSON shapes, which use
the field names of Triton's protobuf messages: the gRPC servicer turns the same documents into
``ModelStatisticsResponse`` / ``ModelConfigResponse`` with ``json_format.ParseDict``, so the two
protocols cannot drift. ``tritonclient``'s ``get_inference_statistics`` and
``get_model_config`` read them unchanged.

What modelyard measures and what it cannot: ``queue`` is the time a request waited in its
model's batcher (0 without batching). The device's worker process measures the rest of
Triton's split for each execution and sends it back with the outputs: ``compute_input`` its
decoding of the request's tensors from the frame, ``compute_infer`` the model's call,
``compute_output`` its encoding of the outputs into the reply frame. A batch's execution
counts once per batch size in ``batch_stats``; in ``inference_stats`` each request of the
batch gets the execution's times, as Triton does. The transport to and from the worker
process (front-end encoding, the socket, the worker's wait for an execution slot, decoding
the reply) is in no compute field: like Triton's own overheads outside the backend it is only
in ``success`` (the request's whole duration, ``nv_inference_request_duration_us``), which is
why ``success`` exceeds ``queue`` plus the three compute fields. A model served in the front
end's process, with no worker to measure, has the whole device time as ``compute_infer``.
The cache counters stay 0 (no response cache). ``memory_usage`` is what each device's
worker measured after the version loaded.

Async safety: read on the server's event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from modelyard.backends import PROTOCOL_PLATFORM
from modelyard.config.schema import ModelConfig, Platform
from modelyard.errors import NotFound
from modelyard.ids import VersionKey
from modelyard.lifecycle.registry import ModelRegistry, VersionEntry
from modelyard.lifecycle.states import ModelState
from modelyard.metrics.stats import LATENCY_BUCKETS_S, StatsBook, VersionStats
from modelyard.planner import Plan
from modelyard.tensors import DataType, TensorSpec

_TRITON_TYPE = {t: "TYPE_STRING" if t is DataType.BYTES else f"TYPE_{t.value}" for t in DataType}

_BACKEND = {
    Platform.TORCHSCRIPT: "pytorch",
    Platform.TORCH_EXPORT: "pytorch",
    Platform.ONNX: "onnxruntime",
    Platform.TENSORFLOW: "tensorflow",
}


class Extensions:
    """The documents of both extensions for one server. ``models`` returns the config of a
    served model by name (None if not configured), ``plan`` the plan in force, ``status`` the
    status document (for measured bytes)."""

    def __init__(
        self,
        book: StatsBook,
        registry: ModelRegistry,
        models: Callable[[str], ModelConfig | None],
        plan: Callable[[], Plan | None],
        status: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._book = book
        self._registry = registry
        self._models = models
        self._plan = plan
        self._status = status

    def statistics(self, model: str = "", version: int | None = None) -> dict[str, Any]:
        """``{"model_stats": [...]}``: every version of every model (``model`` empty), of one
        model, or one version. NotFound for a model or version that is not served."""
        if model:
            entries = self._registry.versions(model)  # NotFound for an unknown model
            if version is not None:
                entries = [e for e in entries if e.key.version == version]
                if not entries:
                    raise NotFound(f"model {model!r} has no version {version}")
        else:
            entries = sorted(self._registry.entries(), key=lambda e: e.key)
        measured = _measured(self._status())
        return {"model_stats": [self._one(e.key, measured) for e in entries]}

    def _one(self, key: VersionKey, measured: Mapping[VersionKey, list[dict[str, Any]]]) -> Any:
        stats = self._book.get(key) or VersionStats()
        zero = _duration(0, 0)
        return {
            "name": key.model,
            "version": str(key.version),
            "last_inference": stats.last_inference_ms,
            "inference_count": stats.inference_count,
            "execution_count": stats.execution_count,
            "inference_stats": {
                "success": _duration(stats.success_count, stats.success_ns),
                "fail": _duration(stats.fail_count, stats.fail_ns),
                "queue": _duration(stats.queue_count, stats.queue_ns),
                "compute_input": _duration(stats.infer_count, stats.input_ns),
                "compute_infer": _duration(stats.infer_count, stats.infer_ns),
                "compute_output": _duration(stats.infer_count, stats.output_ns),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": _duration(n, input_ns),
                    "compute_infer": _duration(n, ns),
                    "compute_output": _duration(n, output_ns),
                }
                for size, (n, ns, input_ns, output_ns) in sorted(stats.batches.items())
            ],
            "memory_usage": measured.get(key, []),
        }

    def traffic(self) -> dict[str, Any]:
        """What the live page draws its rates and latencies from: per version, the totals so
        far (successes, failures by code, the request-duration histogram's counts per bucket,
        not cumulative) and the requests in flight, stamped with the server's time. Rates and
        quantiles are differences between two such documents, as Prometheus computes them
        from ``/metrics`` (the same counters)."""
        rows = []
        for entry in sorted(self._registry.entries(), key=lambda e: e.key):
            stats = self._book.get(entry.key) or VersionStats()
            rows.append(
                {
                    "model": entry.key.model,
                    "version": entry.key.version,
                    "state": entry.state.value,
                    "success": stats.success_count,
                    "failure": stats.fail_count,
                    "failures": {c.value: n for c, n in sorted(stats.failures.items(), key=str)},
                    "in_flight": sum(r.in_flight for r in entry.replicas),
                    "latency_counts": list(stats.request_duration.counts),
                    "latency_sum_s": stats.request_duration.sum,
                    "rows": stats.inference_count,
                    "executions": stats.execution_count,
                }
            )
        return {
            "time_ms": time.time_ns() / 1e6,
            "latency_bounds_s": list(LATENCY_BUCKETS_S),
            "versions": rows,
            "rejected": sum(self._book.rejected.values()),
        }

    def config(self, model: str, version: int | None = None) -> dict[str, Any]:
        """The Triton model configuration of ``model`` (as its ``version``, else its newest
        available version, shows it). NotFound for a model that is not served."""
        entry = self._registry.resolve(model, version)
        config = self._models(model)
        batching = config.batching if config is not None else None
        signature = entry.signature
        if signature is None:  # not loaded yet: the config's declared signature, if any
            signature = _declared(self._registry, model)
        batched = batching is not None
        doc: dict[str, Any] = {
            "name": model,
            "platform": PROTOCOL_PLATFORM.get(entry.platform, ""),
            "backend": _BACKEND.get(entry.platform, ""),
            "max_batch_size": batching.max_batch_size if batching is not None else 0,
            "input": [_tensor(s, batched) for s in signature.inputs] if signature else [],
            "output": [_tensor(s, batched) for s in signature.outputs] if signature else [],
            "instance_group": self._instances(entry),
        }
        if batching is not None:
            doc["dynamic_batching"] = {
                "preferred_batch_size": list(batching.allowed_batch_sizes or ()),
                "max_queue_delay_microseconds": batching.batch_timeout_micros,
            }
        return doc

    def _instances(self, entry: VersionEntry) -> list[dict[str, Any]]:
        """One instance group per device the version is on (Triton's way to say where a
        model runs): KIND_GPU with the CUDA ordinal, or KIND_CPU."""
        plan = self._plan()
        devices = plan.devices_of(entry.key) if plan is not None else ()
        if not devices:
            devices = tuple(sorted({r.device for r in entry.replicas}))
        targets = {u.device.name: u.device.target for u in plan.devices} if plan else {}
        groups: list[dict[str, Any]] = []
        for name in devices:
            target = targets.get(name)
            if target is not None and target.is_cuda:
                groups.append(
                    {"name": name, "kind": "KIND_GPU", "count": 1, "gpus": [target.index]}
                )
            else:
                groups.append({"name": name, "kind": "KIND_CPU", "count": 1})
        return groups


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    """A tensor as Triton's config shows it: with batching, dims leave out the batch dim."""
    dims = list(spec.shape[1:] if batched and spec.shape else spec.shape)
    return {"name": spec.name, "data_type": _TRITON_TYPE[spec.datatype], "dims": dims}


def _declared(registry: ModelRegistry, model: str) -> Any:
    for entry in registry.versions(model):
        if entry.state is ModelState.AVAILABLE and entry.signature is not None:
            return entry.signature
    return None


def _measured(status: Mapping[str, Any]) -> dict[VersionKey, list[dict[str, Any]]]:
    """Per version, its measured bytes per device as Triton's ``memory_usage`` rows."""
    kinds = {d["name"]: d.get("kind", "cpu") for d in status.get("devices", [])}
    indexes = {d["name"]: _index(d.get("target")) for d in status.get("devices", [])}
    out: dict[VersionKey, list[dict[str, Any]]] = {}
    for model in status.get("models", []):
        key = VersionKey(model["model"], int(model["version"]))
        for device, value in sorted((model.get("measured_bytes") or {}).items()):
            if value is None:
                continue
            kind = "GPU" if kinds.get(device) == "cuda" else "CPU"
            row = {"type": kind, "id": indexes.get(device, 0), "byte_size": int(value)}
            out.setdefault(key, []).append(row)
    return out


def _index(target: Any) -> int:
    """The CUDA ordinal in a target's text (``cuda:1`` -> 1); 0 otherwise."""
    text = str(target or "")
    _, _, tail = text.partition(":")
    digits = tail.split("/")[0].split(" ")[0]
    return int(digits) if digits.isdigit() else 0
