"""Joining a Ray cluster: importing ``ray`` (an optional extra) and ``ray.init``.

The one place ``ray`` is imported by name: a missing extra is a ``ConfigError`` that says what
to install, whoever asked for the cluster (``modelyard serve``, ``modelyard plan``, a test).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from modelyard.config.paging import CLUSTER_AND_PAGING
from modelyard.config.schema import ClusterConfig, ServerConfig
from modelyard.errors import ConfigError, Unavailable

log = logging.getLogger(__name__)

NAMESPACE = "modelyard"
"""The Ray namespace of modelyard's actors (``ray list actors --filter namespace=modelyard``)."""

INSTALL_HINT = "pip install 'modelyard[ray]'"


def import_ray() -> ModuleType:
    """``ray``, or ConfigError naming the extra to install."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ConfigError(
            f"the config asks for a Ray cluster (cluster: engine: ray, or --ray-address), but "
            f"Ray is not installed ({exc}); install it with: {INSTALL_HINT}"
        ) from exc


def with_ray_address(config: ServerConfig, address: str | None) -> ServerConfig:
    """``config`` joined to the Ray cluster at ``address`` (``--ray-address``); unchanged when
    ``address`` is None. The flag wins over the file's ``cluster: address``. ConfigError when
    the config has ``paging:`` (``CLUSTER_AND_PAGING``)."""
    if address is None:
        return config
    if config.paging is not None:  # the file's own cluster: key is refused when it is read
        raise ConfigError(f"--ray-address: the config's paging: {CLUSTER_AND_PAGING}")
    cluster = ClusterConfig(address=address)
    return config.model_copy(update={"cluster": cluster})


def connect(cluster: ClusterConfig) -> ModuleType:
    """Join the cluster (once per process; a second call with Ray already up reuses it) and
    return the ``ray`` module. Unavailable when no cluster answers at the address."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(
            address=cluster.address,
            namespace=NAMESPACE,
            log_to_driver=False,  # the workers' logs stay on their nodes (ray logs ...)
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unavailable(
            f"cannot join the Ray cluster at {cluster.address!r}: {exc}; start one with "
            f"'ray start --head' (see docs/cluster.md) or give its address with --ray-address"
        ) from exc
    log.info("joined the Ray cluster at %s", cluster.address)
    return ray
