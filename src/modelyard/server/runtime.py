"""The running server: binds the REST and gRPC ports, loads the models, and stops cleanly.

Start-up order matters to users: ports are bound first, so ``/v2/health/live`` answers while
models load and ``/v2/health/ready`` turns true only once loading is done. Stop is the reverse:
readiness turns false at once, in-flight requests finish, then models unload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from modelyard.batching import batching_wrapper
from modelyard.config.schema import DeviceKind, ServerConfig
from modelyard.errors import NotFound
from modelyard.lifecycle.controller import Controller, InProcessLoader, Loader
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.metrics import ServerMetrics
from modelyard.planner import Plan
from modelyard.planner.footprints import FootprintCache
from modelyard.server.dataplane import DataPlane
from modelyard.server.defaults import (
    DEFAULT_GRPC_PORT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REST_PORT,
)
from modelyard.server.grpc.server import GrpcServer, start_grpc_server
from modelyard.server.http.app import build_app
from modelyard.server.http.status import build_status
from modelyard.workers.loader import WorkerLoader
from modelyard.workers.progress import LoadProgress

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns SIGTERM/SIGINT, so that models
    are unloaded and in-flight requests finish before the process exits."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Server:
    """REST + gRPC front ends, the controller, and the models, as one start/stop unit.

    Not thread-safe: ``start`` and ``stop`` are awaited on the loop that serves.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        host: str = "127.0.0.1",
        rest_port: int = DEFAULT_REST_PORT,
        grpc_port: int = DEFAULT_GRPC_PORT,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        loader: Loader | None = None,
        plan: Plan | None = None,
        access_log: bool = False,
        footprints: FootprintCache | None = None,
    ) -> None:
        """``loader``: default a ``WorkerLoader`` (one worker process per plan device); pass
        ``InProcessLoader()`` to load in this process. ``footprints``: where measured
        footprints are recorded after each load (None: not recorded)."""
        self.config = config
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.max_request_bytes = max_request_bytes
        self.registry = ModelRegistry()
        self.metrics = ServerMetrics(self.registry, plan)
        self.dataplane = DataPlane(self.registry, metrics=self.metrics)
        self._owns_loader = loader is None
        self._loader: Loader = loader if loader is not None else _worker_loader(plan, footprints)
        self.plan = plan
        self.controller = Controller(
            config,
            self.registry,
            self._loader,
            placement=plan.placement() if plan is not None else None,
            device_targets=device_targets(plan) if plan is not None else None,
            unplaced_reason=plan.explanation if plan is not None else "",
            wrap=batching_wrapper,
        )
        if isinstance(self._loader, WorkerLoader):
            self._loader.attach(self.controller)
        self._access_log = access_log
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None

    async def start(self) -> None:
        """Bind both ports (port 0 picks a free one), then load every model."""
        self.controller.desired()  # config errors (missing base paths, labels) before binding
        sock = _bind(self.host, self.rest_port)
        self.rest_port = sock.getsockname()[1]
        app = build_app(
            self.dataplane, max_request_bytes=self.max_request_bytes, status_source=self
        )
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=self._access_log,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        from modelyard.server.grpc.tfserving import tfserving_servicers

        self._grpc = await start_grpc_server(
            self.dataplane,
            self.host,
            self.grpc_port,
            max_message_bytes=self.max_request_bytes,
            extra_servicers=tfserving_servicers(self.dataplane, self.reconfigure),
        )
        self.grpc_port = self._grpc.port
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # raises what stopped it
            await asyncio.sleep(0.01)
        await self.controller.start()
        self.dataplane.started = True

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Readiness false now; let in-flight requests finish; unload every model."""
        self.dataplane.stopping = True
        if self._grpc is not None:
            await self._grpc.stop(grace_seconds)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        await self.controller.stop()
        if self._owns_loader and isinstance(self._loader, InProcessLoader):
            self._loader.shutdown()
        if self._owns_loader and isinstance(self._loader, WorkerLoader):
            await self._loader.aclose()  # returns once every worker process has exited

    async def reconfigure(self, config: ServerConfig) -> None:
        """Serve ``config`` from now on (TF Serving's HandleReloadConfigRequest): plan the added
        models around the current placement, load them, then unload the dropped ones.

        Raises ResourceExhausted (nothing changed) when the added models do not fit.
        """
        from modelyard.planner.demands import plan_for_config

        current = self.plan.placement() if self.plan is not None else None
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(
            None, functools.partial(plan_for_config, config, current=current)
        )
        plan.raise_if_infeasible()
        self.plan = plan
        self.config = config
        await self.controller.reconfigure(config, plan.placement(), device_targets(plan))

    @property
    def loader(self) -> Loader:
        return self._loader

    def status(self) -> dict[str, Any]:
        """The status API's document (``modelyard.server.http.status``)."""
        workers = self._loader.workers if isinstance(self._loader, WorkerLoader) else {}
        return build_status(self.registry, self.plan, workers)

    async def worker_report(self, device: str) -> dict[str, Any]:
        """A device's worker's own report of what it holds."""
        if not isinstance(self._loader, WorkerLoader):
            raise NotFound("models load in the server process: there are no worker processes")
        return await self._loader.report(device)

    @property
    def rest_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"


def _worker_loader(plan: Plan | None, footprints: FootprintCache | None) -> WorkerLoader:
    """A WorkerLoader for ``plan``: GPU slices capped at their capacity, progress per device."""
    caps: dict[str, int] = {}
    expected: dict[str, int] = {}
    if plan is not None:
        for usage in plan.devices:
            if usage.device.kind is DeviceKind.CUDA:
                caps[usage.device.name] = usage.device.capacity_bytes
            expected[usage.device.name] = len(usage.models)
    progress = LoadProgress({d: n for d, n in expected.items() if n})
    return WorkerLoader(memory_caps=caps, progress=progress, footprints=footprints)


def device_targets(plan: Plan) -> dict[str, str]:
    """Plan device name -> what a backend loads onto: ``cuda:<index>`` or ``cpu``."""
    return {
        u.device.name: f"cuda:{u.device.index}" if u.device.kind is DeviceKind.CUDA else "cpu"
        for u in plan.devices
    }


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on accepted sockets whose proto is
    # IPPROTO_TCP, and without it Nagle holds uvicorn's second write (the body after the
    # headers) until the client's delayed ACK, 40 ms per small response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} for REST: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
