"""Corrupt model artifacts, each written the way a real mishap would leave it on disk.

The fault suite puts each of these where a model version belongs and checks that only that
version fails (``tests/integration/test_fault_artifacts.py``). Every writer takes a version
folder and returns nothing; ``CORRUPT_KINDS`` lists them with a phrase the FAILED reason must
contain (what a user reads to know what is wrong). The torch writers import torch.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelyard.testing.models import (
    ONNX_IR_VERSION,
    ONNX_OPSET,
    truncate,
    write_corrupt,
    write_onnx_linear,
    write_torchscript_mlp,
)

HUGE_DECLARED_BYTES = 3 * 2**30
"""What the forged zip directory of ``pt_huge_declared_size`` says one tensor holds."""


@dataclass(frozen=True)
class CorruptKind:
    """One way an artifact can be broken, and what its FAILED reason must say."""

    name: str
    artifact: str
    write: Callable[[Path], None]
    reason: str
    """A phrase of the reason, in lower case (compared with the reason lowered)."""


def onnx_random_bytes(d: Path) -> None:
    write_corrupt(d, "model.onnx", size=4096)


def onnx_truncated(d: Path) -> None:
    truncate(write_onnx_linear(d, in_features=64, out_features=32, seed=3).artifact)


def onnx_empty(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(b"")


def onnx_folder_in_place(d: Path) -> None:
    (d / "model.onnx").mkdir(parents=True)
    (d / "model.onnx" / "weights.bin").write_bytes(b"\0" * 64)


def onnx_unknown_operator(d: Path) -> None:
    """Well-formed protobuf, sized fine; onnxruntime refuses it when the worker loads it."""
    import onnx
    from onnx import TensorProto, helper

    d.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    onnx.save(model, str(d / "model.onnx"))


def pt2_random_bytes(d: Path) -> None:
    write_corrupt(d, "model.pt2", size=4096)


def pt2_empty(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.pt2").write_bytes(b"")


def pt2_zip_not_torch(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(d / "model.pt2", "w") as z:
        z.writestr("notes/readme.txt", "not a model")
        z.writestr("weights.bin", np.zeros(256, np.float32).tobytes())


def pt_truncated(d: Path) -> None:
    truncate(write_torchscript_mlp(d, seed=4).artifact)


def pt_huge_declared_size(d: Path) -> None:
    """A real TorchScript archive whose zip directory says a tensor holds 3 GiB."""
    path = write_torchscript_mlp(d, seed=5).artifact
    data = bytearray(path.read_bytes())
    name = b"/data/0"
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length].endswith(name):
            struct.pack_into("<I", data, at + 24, HUGE_DECLARED_BYTES)  # uncompressed size
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no {name!r} entry in {path}")


CORRUPT_KINDS: tuple[CorruptKind, ...] = (
    CorruptKind("onnx-random", "model.onnx", onnx_random_bytes, "not a valid onnx model"),
    CorruptKind("onnx-truncated", "model.onnx", onnx_truncated, "not a valid onnx model"),
    CorruptKind("onnx-empty", "model.onnx", onnx_empty, "is empty (0 bytes)"),
    CorruptKind("onnx-folder", "model.onnx", onnx_folder_in_place, "is a folder"),
    CorruptKind("onnx-bad-op", "model.onnx", onnx_unknown_operator, "nosuchoperator"),
    CorruptKind("pt2-random", "model.pt2", pt2_random_bytes, "not a zip file"),
    CorruptKind("pt2-empty", "model.pt2", pt2_empty, "is empty (0 bytes)"),
    CorruptKind("pt2-zip-not-torch", "model.pt2", pt2_zip_not_torch, "not a torch.export archive"),
    CorruptKind("pt-truncated", "model.pt", pt_truncated, "not a zip file"),
    CorruptKind("pt-huge-size", "model.pt", pt_huge_declared_size, "declares 3.0 gib"),
)
"""Ten kinds over the three formats (ONNX, torch.export ``.pt2``, TorchScript ``.pt``)."""
