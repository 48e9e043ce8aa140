"""What a server is built from: its options (flags) and its one desired state.

``Server.from_config(config, options)`` (``modelyard.server.runtime``) is the composition root:
the CLI turns flags into ``ServerOptions`` and calls it once; tests build servers the same way
(``modelyard.testing.server.serving``). This module imports no web or gRPC stack, so the CLI can
build options before deciding to serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.config.schema import ServerConfig
from modelyard.deadlines import DeadlinePolicy
from modelyard.management.roots import ModelRoots
from modelyard.management.state import ManagementState, StateStore, apply_overrides
from modelyard.planner.footprints import FootprintCache
from modelyard.server.defaults import (
    DEFAULT_GRPC_PORT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REQUEST_TIMEOUT_MS,
    DEFAULT_REST_PORT,
)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How to serve (everything but the models themselves), one field per ``serve`` flag.

    ``host``/``rest_port``/``grpc_port``: where to listen (port 0 picks a free one).
    ``max_request_bytes``: the largest body or gRPC message accepted.
    ``max_concurrent_requests``: in-flight inference requests per device.
    ``deadline_policy``: requests' deadlines, per protocol.
    ``management_token``: the management API is on only with it.
    ``model_roots``: folders models added through management must be under (None: the folders
    holding the configured models, ``ModelRoots.default_for``).
    ``state_store``: where management changes are saved before they are answered, and read
    back (applied over the config) at start; None: not kept.
    ``footprints``: where measured footprints are read when planning and recorded after each
    load (None: read from the default cache, never recorded).
    ``poll_interval_s``: seconds between polls of the base paths (None: the config's
    ``poll_interval_seconds``, else 1 s; 0 or less: never after start).
    ``metrics``: keep statistics and metrics (``/metrics``, the statistics extension); False
    (``--no-metrics``) takes every count off the request path.
    ``access_log``: one log line per inference call (``modelyard.access``, ``--access-log``).
    ``otlp_endpoint``: export traces there over OTLP/HTTP (None: tracing off).
    ``grpc_server``: which HTTP/2 server carries the gRPC port (``--grpc-server``): "modelyard"
    (``server/grpc/fast.py``) or "grpcio" (grpc.aio's, the one before, kept for a release).
    ``config_files``: polled every ``config_poll_s`` (0: never); when they change,
    ``read_config`` gives the new config.
    """

    host: str = "127.0.0.1"
    rest_port: int = DEFAULT_REST_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_concurrent_requests: int = DEFAULT_MAX_IN_FLIGHT
    deadline_policy: DeadlinePolicy = field(
        default_factory=lambda: DeadlinePolicy(DEFAULT_REQUEST_TIMEOUT_MS)
    )
    access_log: bool = False
    metrics: bool = True
    otlp_endpoint: str | None = None
    grpc_server: str = "modelyard"
    management_token: str | None = None
    model_roots: tuple[Path, ...] | None = None
    state_store: StateStore | None = None
    footprints: FootprintCache | None = None
    poll_interval_s: float | None = None
    config_files: tuple[Path, ...] = ()
    read_config: Callable[[], ServerConfig] | None = None
    config_poll_s: float = 0.0


@dataclass(frozen=True, slots=True)
class DesiredState:
    """The one desired state at start: the files' config, the management overrides still in
    force, and the config they make together (what is planned and served)."""

    file_config: ServerConfig
    overrides: ManagementState
    config: ServerConfig
    roots: ModelRoots


def desired_state(file_config: ServerConfig, options: ServerOptions) -> DesiredState:
    """``file_config`` with the saved management changes applied (``apply_overrides``).

    Raises ConfigError when the state file is not a modelyard state file.
    """
    roots = ModelRoots.chosen(options.model_roots, file_config)
    saved = options.state_store.load() if options.state_store is not None else ManagementState()
    config, overrides = apply_overrides(file_config, saved, roots)
    return DesiredState(file_config, overrides, config, roots)
