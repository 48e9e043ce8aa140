"""Footprint estimates from artifacts, without importing a framework in the estimator."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from modelyard.config.schema import Platform
from modelyard.errors import InvalidArgument
from modelyard.planner.estimate import (
    OVERHEAD_FIXED_BYTES,
    detect_platform,
    estimate_footprint,
    safetensors_bytes,
    weights_bytes,
)

MiB = 2**20


def write_safetensors(path: Path, tensors: dict[str, int]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, n in tensors.items():
        header[name] = {"dtype": "F32", "shape": [n // 4], "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_safetensors_weights_come_from_the_header(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "w.safetensors", {"a": 4000, "b": 96})
    assert safetensors_bytes(tmp_path / "w.safetensors") == 4096


def test_a_truncated_safetensors_file_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(InvalidArgument, match="exceeds the file"):
        safetensors_bytes(bad)


def test_torchscript_archive_counts_only_tensor_entries(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as z:
        z.writestr("model/data/0", b"\0" * 3000)
        z.writestr("model/data/1", b"\0" * 1000)
        z.writestr("model/data.pkl", b"\0" * 500)
        z.writestr("model/code/__torch__/m.py", b"x" * 700)
    assert detect_platform(tmp_path) is Platform.TORCHSCRIPT
    assert weights_bytes(tmp_path) == 4000


def test_torch_export_archive_counts_weights_and_constants(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "model.pt2", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model/data/weights/weight_0", b"\0" * 8000)  # compressed in the zip
        z.writestr("model/data/constants/tensor_0", b"\0" * 100)
        z.writestr("model/data/weights/model_weights_config.json", b"{}" * 50)
        z.writestr("model/data/sample_inputs/model.pt", b"\0" * 900)
    assert weights_bytes(tmp_path, Platform.TORCH_EXPORT) == 8100


def test_savedmodel_counts_its_variables(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\0" * 50)
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.data-00000-of-00001").write_bytes(b"\0" * 7000)
    (tmp_path / "variables" / "variables.index").write_bytes(b"\0" * 24)
    assert weights_bytes(tmp_path) == 7024


def test_estimate_adds_documented_overhead_and_more_workspace_with_batching(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {"w": 100 * MiB})
    plain = estimate_footprint(tmp_path)
    batched = estimate_footprint(tmp_path, batching=True)
    assert plain.weights_bytes == 100 * MiB
    assert plain.total_bytes == 100 * MiB + OVERHEAD_FIXED_BYTES + 10 * MiB + 10 * MiB
    assert batched.total_bytes > plain.total_bytes


def test_a_folder_without_a_model_file_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"model\.onnx"):
        estimate_footprint(tmp_path)


def test_onnx_initializers_and_external_data_are_counted(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    numpy_helper = pytest.importorskip("onnx.numpy_helper")
    import numpy as np

    inner = numpy_helper.from_array(np.zeros((256, 256), np.float32), "inner")  # 256 KiB
    outer = numpy_helper.from_array(np.zeros((1024, 256), np.float32), "outer")  # 1 MiB
    node = onnx.helper.make_node("MatMul", ["x", "inner"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256])],
        initializer=[inner, outer],
    )
    model = onnx.helper.make_model(graph)
    onnx.save_model(
        model,
        str(tmp_path / "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=512 * 1024,  # only `outer` goes to the external file
    )
    assert weights_bytes(tmp_path) == 256 * 1024 + 1024 * 256 * 4
