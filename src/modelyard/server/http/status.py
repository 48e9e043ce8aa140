"""``GET /modelyard/v1/status``: devices, their workers, and every model version, as JSON.

Shape (sizes in bytes; ``null`` where not known)::

    {"devices": [{"name": "sim0", "kind": "cpu", "capacity_bytes": 536870912,
                  "target": "cpu", "pid": 4242, "state": "ready", "restarts": 0,
                  "last_exit": null, "models": ["m1:1", "m2:1"]}, ...],
     "models": [{"model": "m1", "version": 1, "state": "AVAILABLE", "error": "",
                 "devices": ["sim0"], "estimated_bytes": 1048576,
                 "measured_bytes": {"sim0": 2162688}}, ...]}

``GET /modelyard/v1/status/devices/{device}/report`` returns that device's worker's own report
(a cluster's device names hold a slash, ``<node>/gpuN``, and are taken whole)
(pid, CUDA_VISIBLE_DEVICES, each model with its measured bytes and where its weights are).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.devices import DeviceKind
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.planner import Plan
from modelyard.workers.supervisor import DeviceWorker


class StatusSource(Protocol):
    """What the status routes read; the ``Server`` implements it."""

    def status(self) -> dict[str, Any]: ...

    async def worker_report(self, device: str) -> dict[str, Any]: ...


def build_status(
    registry: ModelRegistry, plan: Plan | None, workers: Mapping[str, DeviceWorker]
) -> dict[str, Any]:
    """The status document (see the module doc) from a snapshot of registry, plan and workers."""
    devices: list[dict[str, Any]] = []
    planned = {u.device.name: u for u in plan.devices} if plan is not None else {}
    for name in [*planned, *sorted(set(workers) - set(planned))]:
        usage = planned.get(name)
        worker = workers.get(name)
        info = worker.status() if worker is not None else None
        target = worker.target if worker is not None else None
        if target is None and usage is not None:
            target = usage.device.target
        kind = usage.device.kind if usage is not None else None
        if kind is None:
            kind = target.kind if target is not None else DeviceKind.CPU
        if usage is not None:
            held = [str(k) for k in usage.models]
        else:
            held = sorted(str(k) for k in info.models) if info is not None else []
        devices.append(
            {
                "name": name,
                "kind": kind.value,
                "capacity_bytes": usage.device.capacity_bytes if usage is not None else None,
                "target": str(target) if target is not None else None,
                "pid": info.pid if info is not None else None,
                "state": info.state.value if info is not None else "not started",
                "restarts": info.restarts if info is not None else 0,
                "last_exit": info.last_exit if info is not None else None,
                "models": held,
            }
        )
    estimated = {a.key: a.bytes for a in plan.assignments} if plan is not None else {}
    models: list[dict[str, Any]] = []
    for entry in sorted(registry.entries(), key=lambda e: e.key):
        on = plan.devices_of(entry.key) if plan is not None else ()
        if not on:
            on = tuple(sorted({r.device for r in entry.replicas}))
        measured = {
            device: workers[device].status().measured_bytes(entry.key)
            for device in on
            if device in workers
        }
        models.append(
            {
                "model": entry.key.model,
                "version": entry.key.version,
                "state": entry.state.value,
                "error": entry.error,
                "devices": list(on),
                "estimated_bytes": estimated.get(entry.key),
                "measured_bytes": measured,
            }
        )
    return {"devices": devices, "models": models}


def routes(source: StatusSource) -> list[Route]:
    async def status(request: Request) -> Response:
        return JSONResponse(source.status())

    async def report(request: Request) -> Response:
        return JSONResponse(await source.worker_report(request.path_params["device"]))

    return [
        Route("/modelyard/v1/status", status, methods=["GET"]),
        Route("/modelyard/v1/status/devices/{device:path}/report", report, methods=["GET"]),
    ]
