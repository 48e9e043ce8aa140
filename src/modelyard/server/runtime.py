"""The running server: binds the REST and gRPC ports, loads the models, and stops cleanly.

Start-up order matters to users: ports are bound first, so ``/v2/health/live`` answers while
models load and ``/v2/health/ready`` turns true only once loading is done. Stop is the reverse:
readiness turns false at once, in-flight requests finish, then models unload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from modelyard.batching import batching_wrapper
from modelyard.config.schema import ServerConfig
from modelyard.deadlines import DeadlinePolicy
from modelyard.devices import DeviceTarget
from modelyard.errors import NotFound
from modelyard.lifecycle.controller import Controller, InProcessLoader, Loader
from modelyard.lifecycle.placement import demand_of
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.management import Management, ManagementState, StateStore
from modelyard.management.roots import ModelRoots
from modelyard.metrics import ServerMetrics
from modelyard.planner import Plan
from modelyard.planner.footprints import FootprintCache
from modelyard.repository import PollingSource, aspired_snapshot
from modelyard.server.dataplane import DataPlane
from modelyard.server.defaults import (
    DEFAULT_GRPC_PORT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
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
        max_concurrent_requests: int = DEFAULT_MAX_IN_FLIGHT,
        deadline_policy: DeadlinePolicy | None = None,
        loader: Loader | None = None,
        plan: Plan | None = None,
        access_log: bool = False,
        footprints: FootprintCache | None = None,
        management_token: str | None = None,
        state_store: StateStore | None = None,
        management_state: ManagementState | None = None,
        file_config: ServerConfig | None = None,
        poll_interval_s: float | None = None,
        config_files: Sequence[Path] = (),
        read_config: Callable[[], ServerConfig] | None = None,
        config_poll_s: float = 0.0,
        model_roots: Sequence[Path] | None = None,
    ) -> None:
        """``loader``: default a ``WorkerLoader`` (one worker process per plan device); pass
        ``InProcessLoader()`` to load in this process. ``footprints``: where measured
        footprints are recorded after each load (None: not recorded). ``deadline_policy``:
        requests' deadlines (default: ``--request-timeout-ms``'s default for every protocol);
        ``max_concurrent_requests``: in-flight inference requests per device.

        Lifecycle: base paths are polled every ``poll_interval_s`` (default: the config's
        ``poll_interval_seconds``, else 1 s; 0 or less: never after start). ``config_files``
        are polled every ``config_poll_s`` (0: never) and, when they change, ``read_config``
        gives the new config. Management: on only with ``management_token``; changes are
        saved to ``state_store`` before they are answered; ``config`` is the desired state
        (``file_config`` + ``management_state`` overrides, see ``apply_overrides``); models
        added through it must be under ``model_roots`` (default: the folders holding the
        configured models, ``ModelRoots.default_for``)."""
        self.config = config
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.max_request_bytes = max_request_bytes
        self.registry = ModelRegistry()
        self.metrics = ServerMetrics(self.registry, lambda: self.plan)
        self.dataplane = DataPlane(
            self.registry,
            metrics=self.metrics,
            max_in_flight=max_concurrent_requests,
            deadline_policy=deadline_policy or DeadlinePolicy(DEFAULT_REQUEST_TIMEOUT_MS),
        )
        self._owns_loader = loader is None
        self._loader: Loader = loader if loader is not None else _worker_loader(plan, footprints)
        self.controller = Controller(
            config,
            self.registry,
            self._loader,
            plan=plan,
            device_targets=device_targets(plan) if plan is not None else None,
            unplaced_reason=plan.explanation if plan is not None else "",
            wrap=batching_wrapper,
            demand=demand_of(footprints),
        )
        self.management = Management(
            self.controller,
            self.registry,
            file_config=file_config if file_config is not None else config,
            store=state_store,
            state=management_state,
            roots=ModelRoots.chosen(model_roots, file_config or config),
        )
        self._token = management_token
        interval = poll_interval_s if poll_interval_s is not None else config.poll_interval_seconds
        self._poller = PollingSource(
            versions=self._aspired,
            on_versions=self.controller.converge,
            interval_s=1.0 if interval is None else interval,
            files=config_files,
            on_files=self._reload_files if read_config is not None else None,
            files_interval_s=config_poll_s,
        )
        self._read_config = read_config
        if isinstance(self._loader, WorkerLoader):
            self._loader.attach(self.controller)
        self._access_log = access_log
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self.rest_app: Starlette | None = None  # the REST routes, once started

    async def start(self) -> None:
        """Bind both ports (port 0 picks a free one), then load every model."""
        self.controller.desired()  # config errors (missing base paths, labels) before binding
        sock = _bind(self.host, self.rest_port)
        self.rest_port = sock.getsockname()[1]
        app = self.rest_app = build_app(
            self.dataplane,
            max_request_bytes=self.max_request_bytes,
            status_source=self,
            manager=self.management,
            management_token=self._token,
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
            extra_servicers=tfserving_servicers(
                self.dataplane, self.reconfigure, self.max_request_bytes
            ),
            management=self.management,
            management_token=self._token,
        )
        self.grpc_port = self._grpc.port
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # raises what stopped it
            await asyncio.sleep(0.01)
        await self.controller.start()
        self.dataplane.started = True
        self._poller.start()

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Readiness false now; let in-flight requests finish; unload every model.

        Bounded whatever a worker does: in-flight requests get ``grace_seconds`` (the drain),
        and every request or control call to a worker that stopped answering fails within the
        heartbeat's timeout (``modelyard.workers.heartbeat``), which kills that worker; no
        worker is restarted once stopping began. So a SIGSTOPped worker delays stop by a few
        seconds at most, never by the drain timeout plus the time it stays stopped.
        """
        self.dataplane.stopping = True
        if isinstance(self._loader, WorkerLoader):
            self._loader.stop_restarting()
        await self._poller.stop()
        # Both front ends drain at once: the drain is grace_seconds in all, not once each.
        await asyncio.gather(self._stop_grpc(grace_seconds), self._stop_http(grace_seconds))
        await self.controller.stop()
        if self._owns_loader and isinstance(self._loader, InProcessLoader):
            self._loader.shutdown()
        if self._owns_loader and isinstance(self._loader, WorkerLoader):
            await self._loader.aclose()  # returns once every worker process has exited

    async def _stop_grpc(self, grace_seconds: float) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace_seconds)

    async def _stop_http(self, grace_seconds: float) -> None:
        if self._http is not None and self._http_task is not None:
            self._http.config.timeout_graceful_shutdown = max(0, round(grace_seconds))
            self._http.should_exit = True
            await self._http_task

    def kill_workers(self) -> None:
        """SIGKILL every worker process now: the last resort of a stop that overran (a
        stopped worker would never see its server exit and would stay behind)."""
        if isinstance(self._loader, WorkerLoader):
            self._loader.kill_all()

    async def reconfigure(self, config: ServerConfig) -> None:
        """Serve ``config`` from now on (TF Serving's HandleReloadConfigRequest): plan the added
        models around the current placement, load them, then unload the dropped ones.

        Raises DoesNotFit (a ResourceExhausted; nothing changed) when the added models do not
        fit, PermissionDenied (nothing changed) for a new base path outside the model roots.
        Management overrides (models unloaded or added through the API) still apply.
        """
        await self.management.reload_config(config)
        self.config = self.controller.config

    @property
    def plan(self) -> Plan | None:
        """The plan of what is placed now (changes as models load, unload and move)."""
        return self.controller.plan

    def _aspired(self) -> tuple[tuple[str, tuple[object, ...]], ...]:
        models = [(m.name, m.base_path, m.version_policy) for m in self.controller.config.models]
        return tuple(sorted(aspired_snapshot(models).items()))

    async def _reload_files(self) -> None:
        assert self._read_config is not None
        await self.management.reload_file(self._read_config)
        self.config = self.controller.config

    @property
    def grpc_methods(self) -> tuple[str, ...]:
        """Every gRPC method the server registered (``/package.Service/Method``)."""
        return self._grpc.methods if self._grpc is not None else ()

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
            cap = usage.device.target.memory_cap_bytes
            if cap is not None:
                caps[usage.device.name] = cap
            expected[usage.device.name] = len(usage.models)
    progress = LoadProgress({d: n for d, n in expected.items() if n})
    return WorkerLoader(memory_caps=caps, progress=progress, footprints=footprints)


def device_targets(plan: Plan) -> dict[str, DeviceTarget]:
    """Plan device name -> what a backend loads onto (``Device.target``)."""
    return {u.device.name: u.device.target for u in plan.devices}


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
