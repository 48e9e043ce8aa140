"""``cluster:`` with ``paging:`` is refused before anything starts: paged-out copies live in the
front end's host memory (/dev/shm links) that workers on other nodes cannot read.

No Ray here: ``ray`` is made unimportable, so a check that came after joining the cluster would
fail with "Ray is not installed" instead of the message asserted."""

from __future__ import annotations

import sys

import pytest

from modelyard.cluster.connect import with_ray_address
from modelyard.config import parse_config
from modelyard.config.schema import ClusterConfig
from modelyard.errors import ConfigError
from modelyard.server.runtime import Server

PAGED = """\
devices:
  - {name: sim0, kind: cpu, memory: 1GiB}
paging: {host_memory: 1GiB}
models:
  - {name: m, base_path: /m, memory: 10MiB}
"""


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)


def test_the_file_check_names_the_file_the_line_and_what_to_do() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("cluster: {engine: ray, address: auto}\n" + PAGED, source="c.yaml")
    message = err.value.message
    assert "c.yaml:4: paging: cannot be used with a cluster" in message
    assert "workers on other nodes cannot read" in message
    assert "remove the paging: block to serve on the cluster, or remove cluster:" in message


def test_ray_address_on_a_paged_config_is_refused() -> None:
    config = parse_config(PAGED)
    refused = r"^--ray-address: the config's paging: cannot be used with a cluster"
    with pytest.raises(ConfigError, match=refused):
        with_ray_address(config, "127.0.0.1:1")
    assert with_ray_address(config, None) is config  # without the flag it is served as before


def test_server_from_config_refuses_before_joining_the_cluster() -> None:
    config = parse_config(PAGED).model_copy(update={"cluster": ClusterConfig(address="auto")})
    with pytest.raises(ConfigError, match="paging: cannot be used with a cluster"):
        Server.from_config(config)
