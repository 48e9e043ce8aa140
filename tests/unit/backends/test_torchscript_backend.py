from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelyard.backends import get_backend
from modelyard.backends.torchscript import TorchScriptBackend
from modelyard.config.schema import Platform
from modelyard.errors import FailedPrecondition, InvalidArgument
from modelyard.tensors import DataType, Signature, TensorSpec
from modelyard.testing.models import BuiltModel, truncate, write_corrupt

pytest.importorskip("torch")

import torch

from modelyard.backends._torch import TorchModel

HAS_CUDA = torch.cuda.is_available()


def signature(
    inputs: list[tuple[str, DataType, tuple[int, ...]]],
    outputs: list[tuple[str, DataType, tuple[int, ...]]],
) -> Signature:
    return Signature(tuple(TensorSpec(*i) for i in inputs), tuple(TensorSpec(*o) for o in outputs))


def load(model: BuiltModel, declared: Signature | None, device: str = "cpu") -> TorchModel:
    loaded = TorchScriptBackend().load(model.version_dir, device, declared)
    assert isinstance(loaded, TorchModel)
    return loaded


def test_registry_returns_the_torchscript_backend() -> None:
    backend = get_backend(Platform.TORCHSCRIPT)
    assert isinstance(backend, TorchScriptBackend)
    assert backend.artifact == "model.pt"


def test_without_a_declared_signature_the_load_is_refused(scripted_mlp: BuiltModel) -> None:
    with pytest.raises(InvalidArgument) as info:
        TorchScriptBackend().load(scripted_mlp.version_dir, "cpu", None)
    assert "TorchScript models carry no signature" in info.value.message
    assert "add inputs: and outputs: to the model's config" in info.value.message


@pytest.mark.parametrize("batch", [1, 6])
def test_declared_signature_serves_and_matches_the_reference(
    scripted_mlp: BuiltModel, batch: int
) -> None:
    loaded = load(scripted_mlp, scripted_mlp.signature)
    assert loaded.signature == scripted_mlp.signature
    x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
    got = loaded.predict({"x": x})
    assert list(got) == ["y"]
    np.testing.assert_allclose(
        got["y"], scripted_mlp.reference({"x": x})["y"], rtol=1e-5, atol=1e-6
    )


def test_declared_input_count_is_checked_against_forward(scripted_mlp: BuiltModel) -> None:
    declared = signature(
        [("x", DataType.FP32, (-1, 4)), ("extra", DataType.FP32, (-1, 4))],
        [("y", DataType.FP32, (-1, 3))],
    )
    with pytest.raises(InvalidArgument, match="declares 2 input"):
        load(scripted_mlp, declared)


def test_declared_output_count_is_checked_against_forward(scripted_mlp: BuiltModel) -> None:
    declared = signature(
        [("x", DataType.FP32, (-1, 4))],
        [("y", DataType.FP32, (-1, 3)), ("z", DataType.FP32, (-1, 3))],
    )
    with pytest.raises(InvalidArgument, match="declares 2 output"):
        load(scripted_mlp, declared)


def test_output_that_disagrees_with_the_declared_one_is_an_error(
    scripted_mlp: BuiltModel,
) -> None:
    declared = signature([("x", DataType.FP32, (-1, 4))], [("y", DataType.FP64, (-1, 3))])
    loaded = load(scripted_mlp, declared)
    with pytest.raises(FailedPrecondition, match=r"returned FP32 \[2, 3\] for output y: FP64"):
        loaded.predict(scripted_mlp.example)


def test_bytes_in_the_declared_signature_are_rejected(scripted_mlp: BuiltModel) -> None:
    declared = signature([("x", DataType.BYTES, (-1,))], [("y", DataType.FP32, (-1, 3))])
    with pytest.raises(InvalidArgument, match="string tensor"):
        load(scripted_mlp, declared)


def test_random_bytes_are_rejected(scripted_mlp: BuiltModel, tmp_path: Path) -> None:
    write_corrupt(tmp_path, "model.pt")
    with pytest.raises(InvalidArgument, match="not a TorchScript archive"):
        TorchScriptBackend().load(tmp_path, "cpu", scripted_mlp.signature)


def test_truncated_archive_is_rejected(scripted_mlp: BuiltModel, tmp_path: Path) -> None:
    shutil.copy(scripted_mlp.artifact, tmp_path / "model.pt")
    truncate(tmp_path / "model.pt", 0.5)
    with pytest.raises(InvalidArgument, match=r"model\.pt"):
        TorchScriptBackend().load(tmp_path, "cpu", scripted_mlp.signature)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_loads_and_predicts_on_cuda(scripted_mlp: BuiltModel) -> None:
    loaded = load(scripted_mlp, scripted_mlp.signature, device="cuda:0")
    assert all(p.device.type == "cuda" for p in loaded.module.parameters())
    x = np.random.default_rng(3).standard_normal((9, 4)).astype(np.float32)
    got = loaded.predict({"x": x})["y"]
    np.testing.assert_allclose(got, scripted_mlp.reference({"x": x})["y"], rtol=1e-5, atol=1e-6)
    loaded.unload()
