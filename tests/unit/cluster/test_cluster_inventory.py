"""The cluster's devices from the config and each node's probe, without a cluster: node records
and probe results are values here (the real cluster is tests/cluster/test_ray_cluster.py)."""

from __future__ import annotations

import pytest

from modelyard.cluster.inventory import cluster_inventory
from modelyard.cluster.nodes import NodeInfo, find_node, labelled
from modelyard.config import parse_config
from modelyard.config.schema import DeviceConfig, DeviceKind
from modelyard.devices.inventory import build_inventory
from modelyard.devices.probe import GpuInfo, HostMemory
from modelyard.errors import ConfigError

GiB = 2**30
A = NodeInfo(
    "aa11" * 14, "10.0.0.1", "nodeA", frozenset({"nodeA"}), (), HostMemory(64 * GiB, 60 * GiB)
)
B = NodeInfo(
    "bb22" * 14,
    "10.0.0.2",
    "10.0.0.2",
    frozenset(),
    (GpuInfo(0, "H100", 80 * GiB, 79 * GiB), GpuInfo(1, "H100", 80 * GiB, 40 * GiB)),
    HostMemory(128 * GiB, 100 * GiB),
)


def device(name: str, node: str | None, **fields: object) -> DeviceConfig:
    return DeviceConfig.model_validate({"name": name, "kind": "cpu", "node": node, **fields})


def test_declared_devices_are_found_by_resource_ip_or_id_prefix() -> None:
    devices, selectors = cluster_inventory(
        [
            device("a0", "nodeA", memory="1GiB"),
            device("ahost", "10.0.0.1"),
            device("bslice", B.node_id[:8], kind="cuda", index=1, memory="8GiB"),
        ],
        [A, B],
    )
    by_name = {d.name: d for d in devices}
    assert [d.name for d in devices] == ["a0", "ahost", "bslice"]
    assert (by_name["a0"].node, by_name["a0"].capacity_bytes) == ("nodeA", GiB)
    # A CPU without memory: is that node's RAM, as its own probe measured it.
    assert (by_name["ahost"].capacity_bytes, by_name["ahost"].free_bytes) == (64 * GiB, 60 * GiB)
    # A slice of node B's GPU 1, bounded by what that GPU has free on that node.
    assert by_name["bslice"].node == "10.0.0.2"
    assert by_name["bslice"].kind is DeviceKind.CUDA
    assert by_name["bslice"].index == 1
    assert selectors == {"a0": "nodeA", "ahost": "10.0.0.1", "bslice": B.node_id[:8]}


def test_auto_is_every_gpu_of_every_node_named_by_its_node() -> None:
    devices, _ = cluster_inventory("auto", [A, B])
    assert [(d.name, d.node) for d in devices] == [
        ("10.0.0.2/gpu0", "10.0.0.2"),
        ("10.0.0.2/gpu1", "10.0.0.2"),
    ]
    cpus, _ = cluster_inventory("auto", [A])
    assert [(d.name, d.capacity_bytes) for d in cpus] == [("nodeA/cpu", 64 * GiB)]


def test_a_device_on_a_node_not_in_the_cluster() -> None:
    devices, _ = cluster_inventory([device("c0", "nodeC", memory="2GiB")], [A])
    assert devices[0].present is False
    assert devices[0].capacity_bytes == 2 * GiB
    with pytest.raises(ConfigError, match="node 'nodeC', which is not in the cluster"):
        cluster_inventory([device("c0", "nodeC")], [A])


def test_with_a_cluster_every_declared_device_names_its_node() -> None:
    with pytest.raises(ConfigError, match="device\\(s\\) loose have no node"):
        cluster_inventory([device("loose", None, memory="1GiB")], [A])


def test_a_node_without_a_cluster_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"needs a cluster: add cluster:.*--ray-address"):
        build_inventory([device("a0", "nodeA", memory="1GiB")])


def test_an_ambiguous_node_is_refused() -> None:
    twin = NodeInfo("cc33" * 14, "10.0.0.3", "x", frozenset({"gpu-pool"}))
    other = NodeInfo("dd44" * 14, "10.0.0.4", "y", frozenset({"gpu-pool"}))
    with pytest.raises(ConfigError, match="'gpu-pool' matches 2 nodes"):
        find_node("gpu-pool", [twin, other])
    assert find_node("10.0.0.4", [twin, other]) is other
    assert find_node("nope", [twin, other]) is None


def test_labels_prefer_a_unique_resource_then_a_unique_ip_then_the_id() -> None:
    records = [
        {"NodeID": "a" * 56, "NodeManagerAddress": "127.0.0.1",
         "Resources": {"CPU": 1.0, "nodeA": 1.0, "node:127.0.0.1": 1.0}},
        {"NodeID": "b" * 56, "NodeManagerAddress": "127.0.0.1", "Resources": {"CPU": 1.0}},
        {"NodeID": "c" * 56, "NodeManagerAddress": "10.1.1.1", "Resources": {"GPU": 8.0}},
    ]  # fmt: skip
    labels = {node: label for node, (_, label, _) in labelled(records).items()}
    assert labels == {"a" * 56: "nodeA", "b" * 56: "b" * 8, "c" * 56: "10.1.1.1"}


def test_cluster_config_keys() -> None:
    config = parse_config("cluster: {engine: ray, address: 'ray://head:10001'}\nmodels: []\n")
    assert config.cluster is not None
    assert config.cluster.address == "ray://head:10001"
    with pytest.raises(ConfigError, match="engine"):
        parse_config("cluster: {engine: slurm}\nmodels: []\n")
