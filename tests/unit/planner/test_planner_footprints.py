"""The measured-footprint cache: recorded after a load, preferred by the next plan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.config.loader import parse_config
from modelyard.config.schema import DeviceKind
from modelyard.planner.demands import demands_for_config
from modelyard.planner.footprints import FootprintCache, default_cache_path, record_measured
from modelyard.planner.plan import FootprintSource

MiB = 2**20


def version_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model" / "1"
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\0" * 100)
    (folder / "variables").mkdir()
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * MiB)
    return folder


def test_measured_footprint_is_preferred_by_the_next_plan(tmp_path: Path) -> None:
    folder = version_folder(tmp_path)
    cache = FootprintCache(tmp_path / "cache" / "footprints.json")
    config = parse_config(f"models: [{{name: m, base_path: {folder.parent}}}]")
    before = demands_for_config(config, cache=cache).demands[0]
    assert before.source is FootprintSource.ESTIMATED
    cache.record_measured(folder, 5 * MiB, DeviceKind.CPU)
    after = demands_for_config(config, cache=cache).demands[0]
    assert (after.bytes, after.source) == (5 * MiB, FootprintSource.MEASURED)


def test_a_changed_artifact_is_estimated_again(tmp_path: Path) -> None:
    folder = version_folder(tmp_path)
    cache = FootprintCache(tmp_path / "footprints.json")
    cache.record_measured(folder, 5 * MiB, DeviceKind.CPU)
    assert cache.lookup(folder) == 5 * MiB
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * 2 * MiB)
    assert cache.lookup(folder) is None


def test_the_largest_measurement_across_device_kinds_wins(tmp_path: Path) -> None:
    folder = version_folder(tmp_path)
    cache = FootprintCache(tmp_path / "footprints.json")
    cache.record_measured(folder, 7 * MiB, DeviceKind.CUDA)
    cache.record_measured(folder, 3 * MiB, DeviceKind.CPU)
    assert FootprintCache(tmp_path / "footprints.json").lookup(folder) == 7 * MiB


def test_a_corrupt_cache_reads_as_empty_and_is_rewritten(tmp_path: Path) -> None:
    folder = version_folder(tmp_path)
    path = tmp_path / "footprints.json"
    path.write_text("{not json")
    record_measured(folder, MiB, DeviceKind.CPU, cache_path=path)
    assert FootprintCache(path).lookup(folder) == MiB


def test_cache_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "footprints.json"
    monkeypatch.delenv("MODELYARD_CACHE_DIR")
    assert default_cache_path() == Path(os.path.expanduser("~/.cache/modelyard/footprints.json"))


def test_memory_in_config_overrides_any_measurement(tmp_path: Path) -> None:
    folder = version_folder(tmp_path)
    cache = FootprintCache(tmp_path / "footprints.json")
    cache.record_measured(folder, 5 * MiB, DeviceKind.CPU)
    config = parse_config(f"models: [{{name: m, base_path: {folder.parent}, memory: 64MiB}}]")
    demand = demands_for_config(config, cache=cache).demands[0]
    assert (demand.bytes, demand.source) == (64 * MiB, FootprintSource.CONFIG)
