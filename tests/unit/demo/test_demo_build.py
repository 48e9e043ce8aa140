from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelyard.backends import detect_platform, get_backend
from modelyard.config import ModelConfig, load_config
from modelyard.demo import build_demo_repository, default_cache_dir, demo_examples
from modelyard.demo.build import MARKER_NAME
from modelyard.tensors import Signature

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("cache"))


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def declared(model: ModelConfig) -> Signature | None:
    if model.inputs is None or model.outputs is None:
        return None
    return Signature(tuple(t.spec() for t in model.inputs), tuple(t.spec() for t in model.outputs))


def test_config_loads_and_serves_two_versions_of_each_main_model(demo_config: Path) -> None:
    config = load_config(demo_config)
    models = {m.name: m for m in config.models}
    assert set(models) == {"mlp", "linear", "scripted"}
    platforms = {
        name: detect_platform(m.base_path / "1", m.platform).value for name, m in models.items()
    }
    assert platforms == {"mlp": "torch_export", "linear": "onnx", "scripted": "torchscript"}
    for name in ("mlp", "linear"):
        assert models[name].version_policy.all is True
        assert models[name].version_labels == {"stable": 1, "canary": 2}
        assert sorted(p.name for p in models[name].base_path.iterdir()) == ["1", "2"]


def test_every_version_loads_and_answers_the_example(demo_config: Path) -> None:
    config = load_config(demo_config)
    examples = demo_examples()
    outputs_by_version: dict[str, list[np.ndarray]] = {}
    for model in config.models:
        for version_dir in sorted(model.base_path.iterdir()):
            backend = get_backend(detect_platform(version_dir, model.platform))
            loaded = backend.load(version_dir, "cpu", declared(model))
            inputs = examples[model.name]
            loaded.signature.validate_inputs(inputs)
            got = loaded.predict(inputs)
            assert list(got) == [s.name for s in loaded.signature.outputs]
            for spec in loaded.signature.outputs:
                assert spec.accepts_shape(got[spec.name].shape)
                assert got[spec.name].shape[0] == 1
                assert np.isfinite(got[spec.name]).all()
            outputs_by_version.setdefault(model.name, []).append(next(iter(got.values())))
            loaded.unload()
    for name in ("mlp", "linear"):
        v1, v2 = outputs_by_version[name]
        assert not np.allclose(v1, v2), f"{name} versions 1 and 2 should differ"


def building_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "modelyard.demo.build"]


def test_second_build_reuses_the_first(demo_config: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = mtimes(demo_config.parent)
    with caplog.at_level(logging.INFO, logger="modelyard.demo.build"):
        assert build_demo_repository(demo_config.parent.parent) == demo_config
    assert mtimes(demo_config.parent) == before
    assert building_lines(caplog) == []  # nothing is built, so nothing is announced


def test_a_stale_marker_rebuilds_once_even_with_concurrent_callers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = build_demo_repository(tmp_path)
    marker = config.parent / MARKER_NAME
    stale = {**json.loads(marker.read_text()), "content_version": 0}
    marker.write_text(json.dumps(stale))
    with (
        caplog.at_level(logging.INFO, logger="modelyard.demo.build"),
        ThreadPoolExecutor(2) as pool,
    ):
        paths = list(pool.map(lambda _: build_demo_repository(tmp_path), range(2)))
    assert paths == [config, config]
    # The wait is announced once, with the folder the models go to, then each model as it is
    # written (the build takes seconds: no silent wait).
    lines = building_lines(caplog)
    assert lines[0] == f"building the demo models (mlp, linear, scripted) into {config.parent}"
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "demo 1/3: mlp",
        "demo 2/3: linear",
        "demo 3/3: scripted",
    ]
    assert json.loads(marker.read_text())["content_version"] != 0
    # No staging or old folders are left behind, and the rebuilt config loads.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "repository"]
    assert len(load_config(config).models) == 3


def test_cache_dir_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "demo"
    monkeypatch.delenv("MODELYARD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "modelyard" / "demo"
