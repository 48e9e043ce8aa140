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
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette

from modelyard.batching import batching_wrapper
from modelyard.config.paging import CLUSTER_AND_PAGING
from modelyard.config.schema import ModelConfig, ServerConfig
from modelyard.devices.inventory import build_inventory
from modelyard.errors import ConfigError, NotFound
from modelyard.lifecycle.controller import Controller, Loader
from modelyard.lifecycle.paging.loader import PagingLoader
from modelyard.lifecycle.placement import demand_of
from modelyard.lifecycle.registry import ModelRegistry
from modelyard.management import Management
from modelyard.metrics import ServerMetrics
from modelyard.metrics.extensions import Extensions
from modelyard.observability.boundary import Observer
from modelyard.observability.logs import AccessLog
from modelyard.observability.tracing import Tracer
from modelyard.planner import Plan
from modelyard.planner.demands import plan_for_config, plan_paging_for_config
from modelyard.planner.footprints import FootprintCache
from modelyard.planner.paging import PagingPlan
from modelyard.repository import PollingSource, aspired_snapshot
from modelyard.server.dataplane import DataPlane
from modelyard.server.grpc.server import GrpcServer, Implementation, start_grpc_server
from modelyard.server.http.app import build_app
from modelyard.server.http.status import build_status
from modelyard.server.http.transport import http_protocol
from modelyard.server.listen import ListenError, Protocol
from modelyard.server.options import DesiredState, ServerOptions, desired_state
from modelyard.server.paging import paging_loader
from modelyard.workers.launcher import WorkerLauncher
from modelyard.workers.loader import WorkerLoader
from modelyard.workers.progress import LoadProgress

if TYPE_CHECKING:
    from modelyard.cluster.runtime import ClusterRuntime

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
        desired: DesiredState,
        plan: Plan,
        options: ServerOptions,
        loader: Loader | None = None,
        cluster: ClusterRuntime | None = None,
        paging: PagingPlan | None = None,
    ) -> None:
        """Wire the parts for ``desired``, placed as ``plan`` says; ``from_config`` is the way
        in (it plans). ``loader``: default a ``WorkerLoader`` (one worker process per plan
        device, owned and stopped by this server); a given loader (e.g. ``InProcessLoader()``)
        is its caller's to close. ``cluster``: the Ray cluster's parts (``from_config`` joins
        it when the config has ``cluster:``): workers start on their devices' nodes."""
        config = desired.config
        self.config = config
        self.options = options
        self.start_plan = plan
        self.host = options.host
        self.rest_port = options.rest_port
        self.grpc_port = options.grpc_port
        self.max_request_bytes = options.max_request_bytes
        self.registry = ModelRegistry()
        # Statistics and metrics (None with --no-metrics: the request path then counts nothing).
        self.metrics: ServerMetrics | None = None
        if options.metrics:
            self.metrics = ServerMetrics(self.registry, lambda: self.plan, self.status)
        self.dataplane = DataPlane(
            self.registry,
            metrics=self.metrics,
            max_in_flight=options.max_concurrent_requests,
            deadline_policy=options.deadline_policy,
        )
        if self.metrics is not None:
            self.dataplane.introspection = Extensions(
                self.metrics.book, self.registry, self._model_config, lambda: self.plan, self.status
            )
            self.dataplane.extensions += ("statistics", "model_configuration")
        self.tracer = Tracer(options.otlp_endpoint) if options.otlp_endpoint else None
        self.observer = Observer(
            count=self.metrics.call_ended if self.metrics is not None else None,
            access=AccessLog() if options.access_log else None,
            tracer=self.tracer,
        )
        # The worker processes this server launched and owns (None: a caller's loader).
        self._workers: WorkerLoader | None = None
        if loader is None:
            launcher = cluster.launcher if cluster is not None else None
            loader = self._workers = _worker_loader(plan, options.footprints, launcher)
        self.paging: PagingLoader | None = None  # with paging: (docs/paging.md)
        if paging is not None and config.paging is not None:
            loader = self.paging = paging_loader(loader, self._workers, paging, config.paging)
        self._loader: Loader = loader
        self.controller = Controller(
            config,
            self.registry,
            self._loader,
            plan=plan,
            unplaced_reason=plan.explanation,
            wrap=batching_wrapper,
            demand=demand_of(options.footprints),
        )
        self.management = Management(
            self.controller,
            self.registry,
            file_config=desired.file_config,
            store=options.state_store,
            state=desired.overrides,
            roots=desired.roots,
        )
        self._token = options.management_token
        interval = options.poll_interval_s
        if interval is None:
            interval = config.poll_interval_seconds
        self._poller = PollingSource(
            versions=self._aspired,
            on_versions=self.controller.converge,
            interval_s=1.0 if interval is None else interval,
            files=options.config_files,
            on_files=self._reload_files if options.read_config is not None else None,
            files_interval_s=options.config_poll_s,
        )
        self._read_config = options.read_config
        if self._workers is not None:
            self._workers.attach(self.controller)
        self.cluster = cluster
        if cluster is not None:
            cluster.attach(self.controller, self._workers)
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: GrpcServer | None = None
        self.rest_app: Starlette | None = None  # the REST routes, once started

    @classmethod
    def from_config(
        cls,
        config: ServerConfig,
        options: ServerOptions | None = None,
        *,
        loader: Loader | None = None,
    ) -> Server:
        """The composition root: the server for ``config`` (the files' config) and
        ``options``, planned and wired, not started.

        Applies the saved management changes (``options.state_store``), plans the result on
        this machine's devices (measured by ``build_inventory``, placed by ``plan_for_config``;
        an infeasible plan is kept, and the versions it could not place start FAILED:
        ``start_plan.feasible`` says whether all fit), and builds the controller, loader, data
        plane and front ends. Raises ConfigError for a bad device list, state file, a model
        with neither files nor ``memory:``, or ``cluster:`` with ``paging:`` (before Ray is
        joined).
        """
        options = options if options is not None else ServerOptions()
        desired = desired_state(config, options)
        cluster: ClusterRuntime | None = None
        if desired.config.cluster is not None and desired.config.paging is not None:
            raise ConfigError(f"paging: {CLUSTER_AND_PAGING}")  # a config not from a file
        if desired.config.cluster is not None:  # ray is imported only here, only then
            from modelyard.cluster.runtime import join_cluster

            cluster = join_cluster(desired.config.cluster, desired.config.devices)
            devices = cluster.devices
        else:
            devices = build_inventory(desired.config.devices)
        if desired.config.paging is not None:
            paged = plan_paging_for_config(desired.config, devices, cache=options.footprints)
            return cls(
                desired, paged.booking_plan(), options, loader, cluster=cluster, paging=paged
            )
        plan = plan_for_config(desired.config, devices, cache=options.footprints)
        return cls(desired, plan, options, loader, cluster=cluster)

    async def start(self) -> None:
        """Bind both ports (port 0 picks a free one) and load every model; ready once both
        are done. The workers start (and import their frameworks) while the ports are bound:
        the two overlap instead of adding up in the cold start."""
        self.controller.desired()  # config errors (missing base paths, labels) before binding
        loading = asyncio.create_task(self.controller.start(), name="modelyard-load")
        await asyncio.sleep(0)  # let it spawn the workers before the front ends are built
        try:
            await self._start_front_ends()
        except BaseException:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            raise
        await loading
        self.dataplane.started = True
        self._poller.start()
        if self.cluster is not None:
            self.cluster.start()

    async def _start_front_ends(self) -> None:
        """Bind and start the REST and gRPC servers."""
        sock = _bind(self.host, self.rest_port)
        self.rest_port = sock.getsockname()[1]
        app = self.rest_app = build_app(
            self.dataplane,
            max_request_bytes=self.max_request_bytes,
            status_source=self,
            manager=self.management,
            management_token=self._token,
            observer=self.observer,
        )
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,  # modelyard's own (--access-log) covers every protocol
            log_level="warning",
            log_config=None,  # its records go to modelyard's handler (--log-format), not its own
            timeout_graceful_shutdown=30,
            http=http_protocol(getattr(app, "lean", None)),  # issue 18: the REST entry
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
            observer=self.observer,
            implementation=Implementation(self.options.grpc_server),
        )
        self.grpc_port = self._grpc.port
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # raises what stopped it
            await asyncio.sleep(0.01)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Readiness false now; let in-flight requests finish; unload every model.

        Bounded whatever a worker does: in-flight requests get ``grace_seconds`` (the drain),
        and every request or control call to a worker that stopped answering fails within the
        heartbeat's timeout (``modelyard.workers.heartbeat``), which kills that worker; no
        worker is restarted once stopping began. So a SIGSTOPped worker delays stop by a few
        seconds at most, never by the drain timeout plus the time it stays stopped.
        """
        self.dataplane.stopping = True
        if self.cluster is not None:
            await self.cluster.stop()
        if self._workers is not None:
            self._workers.stop_restarting()
        await self._poller.stop()
        # Both front ends drain at once: the drain is grace_seconds in all, not once each.
        await asyncio.gather(self._stop_grpc(grace_seconds), self._stop_http(grace_seconds))
        await self.controller.stop()
        if self._workers is not None:
            await self._workers.aclose()  # returns once every worker process has exited
        if self.paging is not None:
            await self.paging.pager.aclose()  # host memory's copies go
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)  # export the last traces

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
        if self._workers is not None:
            self._workers.kill_all()

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

    def _model_config(self, name: str) -> ModelConfig | None:
        return next((m for m in self.controller.config.models if m.name == name), None)

    @property
    def grpc_methods(self) -> tuple[str, ...]:
        """Every gRPC method the server registered (``/package.Service/Method``)."""
        return self._grpc.methods if self._grpc is not None else ()

    @property
    def loader(self) -> Loader:
        return self._loader

    def status(self) -> dict[str, Any]:
        """The status API's document (``modelyard.server.http.status``)."""
        workers = self._workers.workers if self._workers is not None else {}
        document = build_status(self.registry, self.plan, workers)
        if self.cluster is not None:  # each device's node
            for device in document["devices"]:
                device["node"] = self.cluster.node_of(device["name"])
        if self.paging is not None:
            document["paging"] = self.paging.pager.status()
        return document

    async def worker_report(self, device: str) -> dict[str, Any]:
        """A device's worker's own report of what it holds."""
        if self._workers is None:
            raise NotFound("models load in the server process: there are no worker processes")
        return await self._workers.report(device)

    @property
    def rest_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"


def _worker_loader(
    plan: Plan, footprints: FootprintCache | None, launcher: WorkerLauncher | None = None
) -> WorkerLoader:
    """A WorkerLoader for ``plan``: GPU slices capped at their capacity, progress per device."""
    caps: dict[str, int] = {}
    expected: dict[str, int] = {}
    for usage in plan.devices:
        cap = usage.device.target.memory_cap_bytes
        if cap is not None:
            caps[usage.device.name] = cap
        expected[usage.device.name] = len(usage.models)
    progress = LoadProgress({d: n for d, n in expected.items() if n})
    return WorkerLoader(
        memory_caps=caps, progress=progress, footprints=footprints, launcher=launcher
    )


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
        raise ListenError(Protocol.REST, host, port, exc.strerror or str(exc)) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
