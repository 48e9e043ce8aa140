"""Model artifacts shared by the backend tests, built once per session (torch.export is slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing.models import (
    BuiltModel,
    write_onnx_int64_affine,
    write_onnx_linear,
    write_onnx_sum_product,
    write_torch_export_mlp,
    write_torch_export_sum_product,
    write_torchscript_mlp,
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-models")


@pytest.fixture(scope="session")
def onnx_linear(models_dir: Path) -> BuiltModel:
    return write_onnx_linear(models_dir / "onnx_linear" / "1", in_features=4, out_features=2)


@pytest.fixture(scope="session")
def onnx_linear_relu(models_dir: Path) -> BuiltModel:
    return write_onnx_linear(models_dir / "onnx_relu" / "1", 5, 3, seed=4, relu=True)


@pytest.fixture(scope="session")
def onnx_sum_product(models_dir: Path) -> BuiltModel:
    return write_onnx_sum_product(models_dir / "onnx_sum_product" / "1")


@pytest.fixture(scope="session")
def onnx_int64(models_dir: Path) -> BuiltModel:
    return write_onnx_int64_affine(models_dir / "onnx_int64" / "1", scale=3, offset=-2)


@pytest.fixture(scope="session")
def export_mlp(models_dir: Path) -> BuiltModel:
    return write_torch_export_mlp(models_dir / "export_mlp" / "1", seed=1)


@pytest.fixture(scope="session")
def export_mlp_static(models_dir: Path) -> BuiltModel:
    return write_torch_export_mlp(models_dir / "export_static" / "1", seed=2, dynamic_batch=False)


@pytest.fixture(scope="session")
def export_sum_product(models_dir: Path) -> BuiltModel:
    return write_torch_export_sum_product(models_dir / "export_sum_product" / "1")


@pytest.fixture(scope="session")
def scripted_mlp(models_dir: Path) -> BuiltModel:
    return write_torchscript_mlp(models_dir / "scripted" / "1", seed=5)
