from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import modelyard.backends
from modelyard.backends import get_backend
from modelyard.backends.torch_export import TorchExportBackend
from modelyard.config import load_config
from modelyard.errors import BackendMissing
from modelyard.testing.models import build_test_repository, write_onnx_linear


def test_onnx_repository_builds_and_serves_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes "import torch" fail, as on a machine without the extra.
    for name in (
        "torch",
        "modelyard.backends._torch",
        "modelyard.demo._torch_models",
        "modelyard.testing._torch_models",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    # "from modelyard.backends import _torch" finds an earlier import on the package itself.
    monkeypatch.delattr(modelyard.backends, "_torch", raising=False)
    config_path, models = build_test_repository(tmp_path, with_torch=False)
    config = load_config(config_path)
    assert (
        {m.name for m in config.models} == set(models) == {"linear", "sum_product", "int64_affine"}
    )
    for versions in models.values():
        for built in versions.values():
            loaded = get_backend(built.platform).load(built.version_dir, "cpu", None)
            assert loaded.signature == built.signature
            got, want = loaded.predict(built.example), built.reference(built.example)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendMissing, match=r"pip install 'modelyard\[torch\]'"):
        TorchExportBackend().load(tmp_path, "cpu", None)


def test_builders_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_onnx_linear(tmp_path / "a", seed=3)
    b = write_onnx_linear(tmp_path / "b", seed=3)
    c = write_onnx_linear(tmp_path / "c", seed=4)
    assert a.artifact.read_bytes() == b.artifact.read_bytes()
    assert a.artifact.read_bytes() != c.artifact.read_bytes()


def test_full_repository_declares_the_torchscript_signature(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    config_path, models = build_test_repository(tmp_path, devices="auto")
    config = load_config(config_path)
    by_name = {m.name: m for m in config.models}
    assert set(by_name) == set(models)
    scripted = by_name["scripted"]
    assert scripted.inputs is not None
    assert scripted.outputs is not None
    assert tuple(t.spec() for t in scripted.inputs) == models["scripted"][1].signature.inputs
    assert by_name["mlp"].version_labels == {"stable": 1, "canary": 2}
