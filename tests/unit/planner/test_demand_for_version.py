"""Sizing one version is a direct call, and it agrees with what ``modelyard plan`` sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config.loader import parse_config
from modelyard.config.schema import DeviceKind
from modelyard.errors import InvalidArgument
from modelyard.planner.demands import demand_for_version, demands_for_config
from modelyard.planner.footprints import FootprintCache
from modelyard.planner.plan import FootprintSource

MiB = 2**20


def _saved_model(folder: Path, weights: int) -> None:
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\0" * 100)
    (folder / "variables").mkdir()
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * weights)


def test_one_version_is_sized_as_the_whole_config_sizes_it(tmp_path: Path) -> None:
    _saved_model(tmp_path / "m" / "1", MiB)
    _saved_model(tmp_path / "m" / "2", 3 * MiB)
    cache = FootprintCache(tmp_path / "footprints.json")
    cache.record_measured(tmp_path / "m" / "2", 9 * MiB, DeviceKind.CPU)
    config = parse_config(
        f"models: [{{name: m, base_path: {tmp_path / 'm'}, replicas: 2, "
        "version_policy: {latest: 2}}]"
    )
    model = config.models[0]
    whole = {d.key.version: d for d in demands_for_config(config, cache=cache).demands}
    for version in (1, 2):
        assert demand_for_version(model, version, cache=cache) == whole[version]
    assert whole[2].source is FootprintSource.MEASURED
    assert whole[2].bytes == 9 * MiB
    assert whole[1].replicas == 2


def test_a_missing_or_corrupt_version_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"not onnx")
    model = parse_config(f"models: [{{name: m, base_path: {tmp_path / 'm'}}}]").models[0]
    with pytest.raises(InvalidArgument, match="no version folder"):
        demand_for_version(model, 7)
    with pytest.raises(InvalidArgument, match=r"model\.onnx"):
        demand_for_version(model, 1)


def test_memory_in_config_needs_no_folder(tmp_path: Path) -> None:
    model = parse_config(
        f"models: [{{name: m, base_path: {tmp_path / 'absent'}, memory: 5MiB}}]"
    ).models[0]
    demand = demand_for_version(model, 3)
    assert (demand.bytes, demand.source) == (5 * MiB, FootprintSource.CONFIG)
