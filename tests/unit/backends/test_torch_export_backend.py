from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelyard.backends import LoadedModel, get_backend
from modelyard.backends.torch_export import TorchExportBackend
from modelyard.config.schema import Platform
from modelyard.errors import FailedPrecondition, InvalidArgument, Unavailable
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.testing.models import BuiltModel, truncate, write_corrupt

pytest.importorskip("torch")

import torch

from modelyard.backends._torch import TorchModel

HAS_CUDA = torch.cuda.is_available()


def load(model: BuiltModel, declared: Signature | None = None, device: str = "cpu") -> TorchModel:
    loaded = TorchExportBackend().load(model.version_dir, device, declared)
    assert isinstance(loaded, TorchModel)
    return loaded


def assert_matches(loaded: LoadedModel, model: BuiltModel, inputs: dict[str, np.ndarray]) -> None:
    got = loaded.predict(inputs)
    want = model.reference(inputs)
    assert set(got) == set(want)
    for name, expected in want.items():
        assert isinstance(got[name], np.ndarray)
        assert got[name].dtype == expected.dtype
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


def test_registry_returns_the_torch_export_backend() -> None:
    backend = get_backend(Platform.TORCH_EXPORT)
    assert isinstance(backend, TorchExportBackend)
    assert backend.artifact == "model.pt2"


def test_signature_comes_from_the_program(export_mlp: BuiltModel) -> None:
    loaded = load(export_mlp)
    assert isinstance(loaded, LoadedModel)
    assert loaded.signature == Signature(
        (TensorSpec("x", DataType.FP32, (-1, 4)),),
        (TensorSpec("output_0", DataType.FP32, (-1, 3)),),
    )


def test_static_batch_is_a_fixed_dimension(export_mlp_static: BuiltModel) -> None:
    assert load(export_mlp_static).signature.inputs == (TensorSpec("x", DataType.FP32, (2, 4)),)


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_predict_matches_the_numpy_reference(export_mlp: BuiltModel, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    assert_matches(load(export_mlp), export_mlp, {"x": x})


def test_tuple_outputs_are_numbered(export_sum_product: BuiltModel) -> None:
    loaded = load(export_sum_product)
    assert loaded.signature == export_sum_product.signature
    assert [s.name for s in loaded.signature.outputs] == ["output_0", "output_1"]
    assert_matches(loaded, export_sum_product, export_sum_product.example)


def test_read_only_input_is_accepted_and_left_unchanged(export_mlp: BuiltModel) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    x.flags.writeable = False
    assert_matches(load(export_mlp), export_mlp, {"x": x})
    np.testing.assert_array_equal(x, np.arange(8, dtype=np.float32).reshape(2, 4))


def test_input_the_program_rejects_is_an_invalid_argument(export_mlp_static: BuiltModel) -> None:
    # The data plane checks shapes against the signature first; called directly, a shape the
    # program was not traced for must still come back as a clean error, not a crash.
    with pytest.raises(InvalidArgument, match="the model rejected this input"):
        load(export_mlp_static).predict({"x": np.zeros((3, 4), dtype=np.float32)})


def test_random_bytes_are_rejected_with_the_file_named(tmp_path: Path) -> None:
    path = write_corrupt(tmp_path / "1", "model.pt2")
    with pytest.raises(InvalidArgument, match=r"not a torch\.export archive") as info:
        TorchExportBackend().load(tmp_path / "1", "cpu", None)
    assert str(path) in info.value.message


def test_truncated_archive_is_rejected(export_mlp: BuiltModel, tmp_path: Path) -> None:
    shutil.copy(export_mlp.artifact, tmp_path / "model.pt2")
    truncate(tmp_path / "model.pt2", 0.7)
    with pytest.raises(InvalidArgument, match=r"model\.pt2"):
        TorchExportBackend().load(tmp_path, "cpu", None)


def test_zip_that_is_not_a_program_is_rejected(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.pt2", "w") as archive:
        archive.writestr("hello.txt", "not a model")
    with pytest.raises(InvalidArgument, match=r"cannot be loaded as a torch\.export program"):
        TorchExportBackend().load(tmp_path, "cpu", None)


def test_declared_signature_renames_inputs_and_outputs(export_sum_product: BuiltModel) -> None:
    spec = (-1, 3)
    declared = Signature(
        (TensorSpec("left", DataType.FP32, spec), TensorSpec("right", DataType.FP32, spec)),
        (TensorSpec("added", DataType.FP32, spec), TensorSpec("multiplied", DataType.FP32, spec)),
    )
    loaded = load(export_sum_product, declared)
    assert loaded.signature == declared
    a, b = export_sum_product.example["a"], export_sum_product.example["b"]
    out = loaded.predict({"left": a, "right": b})
    np.testing.assert_allclose(out["added"], a + b, rtol=1e-6)
    np.testing.assert_allclose(out["multiplied"], a * b, rtol=1e-6)


def test_declared_signature_that_disagrees_is_rejected(export_mlp: BuiltModel) -> None:
    declared = Signature(
        (TensorSpec("x", DataType.FP32, (-1, 4)),),
        (TensorSpec("scores", DataType.FP16, (-1, 3)),),
    )
    with pytest.raises(InvalidArgument) as info:
        load(export_mlp, declared)
    assert "scores: FP16 [?, 3]" in info.value.message
    assert "output_0: FP32 [?, 3]" in info.value.message


def test_bfloat16_program_is_rejected_at_load(tmp_path: Path) -> None:
    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    program = torch.export.export(Double(), (torch.ones(2, dtype=torch.bfloat16),))
    torch.export.save(program, tmp_path / "model.pt2")
    with pytest.raises(InvalidArgument, match="bfloat16"):
        TorchExportBackend().load(tmp_path, "cpu", None)


def test_concurrent_predicts_are_each_correct(export_mlp: BuiltModel) -> None:
    loaded = load(export_mlp)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((i % 5 + 1, 4)).astype(np.float32) for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: loaded.predict({"x": x})["output_0"], batches))
    for x, got in zip(batches, results, strict=True):
        want = export_mlp.reference({"x": x})["output_0"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unload_drops_the_module(export_mlp: BuiltModel) -> None:
    loaded = load(export_mlp)
    loaded.unload()
    with pytest.raises(Unavailable):
        loaded.predict(export_mlp.example)


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is visible")
def test_cuda_device_without_a_gpu_fails_clearly(export_mlp: BuiltModel) -> None:
    with pytest.raises(FailedPrecondition, match="no CUDA device"):
        load(export_mlp, device="cuda:0")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_loads_and_predicts_on_cuda(export_mlp: BuiltModel) -> None:
    loaded = load(export_mlp, device="cuda:0")
    params = list(loaded.module.parameters()) + list(loaded.module.buffers())
    assert params
    assert all(p.device.type == "cuda" for p in params)
    x = np.random.default_rng(3).standard_normal((9, 4)).astype(np.float32)
    assert_matches(loaded, export_mlp, {"x": x})
    loaded.unload()
