"""A model version's memory footprint, estimated from its files without importing a framework.

    footprint = weights + overhead + workspace
    overhead  = 32 MiB + 10 % of weights   (runtime bookkeeping, graph, allocator slack)
    workspace = 10 % of weights, or 25 % when the model has `batching:` (activations of a batch)

The per-process cost of a framework (a CUDA context, the torch/onnxruntime libraries) is paid
once per device worker, not per model: it belongs in the device's headroom
(``headroom_fraction``), not here. Figures comparing these estimates with measured loads are in
docs/planner.md. Estimates aim to be an upper bound; a measured footprint, when recorded, wins
(see ``footprints``), and ``memory:`` in config wins over both.

Weights, per artifact in a version folder:
- ONNX ``model.onnx``: initializer (and Constant node) tensor bytes, read with the ``onnx``
  package when installed (``load_external_data=False``) plus the sizes of external data files;
  without ``onnx``, the file size plus external data files.
- torch.export ``model.pt2`` / TorchScript ``model.pt``: zip archives; the sizes of their tensor
  data entries (``*/data/<n>``, ``*/constants/<n>``, ``*/data/weights/*``, ``*/data/constants/*``).
- TF SavedModel ``saved_model.pb``: the files under ``variables/``.
- ``*.safetensors`` files beside any of these (or alone): tensor bytes from their JSON header.
"""

from __future__ import annotations

import importlib
import json
import math
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelyard.config.schema import Platform
from modelyard.errors import InvalidArgument

MiB = 2**20
OVERHEAD_FIXED_BYTES = 32 * MiB
OVERHEAD_FRACTION = 0.10
WORKSPACE_FRACTION = 0.10
WORKSPACE_FRACTION_BATCHING = 0.25

FORMATS: tuple[Platform, ...] = tuple(p for p in Platform if p is not Platform.AUTO)
"""The formats an artifact can be in, in the order detection tries them."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """An estimated footprint and its parts, in bytes."""

    weights_bytes: int
    overhead_bytes: int
    workspace_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.overhead_bytes + self.workspace_bytes


def detect_platform(version_dir: Path) -> Platform | None:
    """The platform whose artifact file is in ``version_dir`` (first match in FORMATS)."""
    for platform in FORMATS:
        if (version_dir / platform.artifact).is_file():
            return platform
    return None


def estimate_footprint(
    version_dir: Path, platform: Platform = Platform.AUTO, *, batching: bool = False
) -> Estimate:
    """Estimate the footprint of the version in ``version_dir`` (formula in the module doc).

    Raises InvalidArgument when the folder holds no artifact this module can read.
    """
    weights = weights_bytes(version_dir, platform)
    workspace = WORKSPACE_FRACTION_BATCHING if batching else WORKSPACE_FRACTION
    return Estimate(
        weights_bytes=weights,
        overhead_bytes=OVERHEAD_FIXED_BYTES + math.ceil(weights * OVERHEAD_FRACTION),
        workspace_bytes=math.ceil(weights * workspace),
    )


def weights_bytes(version_dir: Path, platform: Platform = Platform.AUTO) -> int:
    """Bytes of weights in ``version_dir``: the artifact's tensors plus any ``*.safetensors``."""
    if platform is Platform.AUTO:
        platform = detect_platform(version_dir) or Platform.AUTO
    extra = sum(safetensors_bytes(p) for p in sorted(version_dir.glob("*.safetensors")))
    reader = _READERS.get(platform)
    if reader is None:
        if extra:
            return extra
        raise InvalidArgument(
            f"{version_dir} holds no model file to estimate from; expected one of "
            f"{', '.join(p.artifact for p in FORMATS)} or *.safetensors (or give memory: in config)"
        )
    artifact = version_dir / platform.artifact
    if not artifact.is_file():
        raise InvalidArgument(f"{artifact} not found for platform {platform.value}")
    return reader(artifact) + extra


def torch_archive_bytes(path: Path) -> int:
    """Tensor bytes in a TorchScript or torch.export zip archive (uncompressed entry sizes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in archive.infolist() if _is_tensor_entry(i.filename))
    except zipfile.BadZipFile as exc:
        raise InvalidArgument(f"{path} is not a torch archive (not a zip file)") from exc


def _is_tensor_entry(name: str) -> bool:
    # Entries sit under one root folder named after the archive: "<root>/data/0", ...
    parts = PurePosixPath(name).parts[1:]
    if len(parts) == 2 and parts[0] in ("data", "constants") and parts[1].isdigit():
        return True  # TorchScript storages
    return (
        len(parts) == 3
        and parts[0] == "data"
        and parts[1] in ("weights", "constants")
        and not parts[2].endswith(".json")
    )  # torch.export (PT2 archive) weights and constants


def savedmodel_bytes(saved_model_pb: Path) -> int:
    """Bytes of the files under ``variables/`` beside ``saved_model.pb``."""
    variables = saved_model_pb.parent / "variables"
    if not variables.is_dir():
        return 0  # a SavedModel with constants folded into the graph
    return sum(p.stat().st_size for p in variables.rglob("*") if p.is_file())


def safetensors_bytes(path: Path) -> int:
    """Tensor bytes from a safetensors header: u64 little-endian length, then a JSON header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InvalidArgument(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise InvalidArgument(f"{path}: safetensors header length {length} exceeds the file")
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise InvalidArgument(f"{path}: safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise InvalidArgument(f"{path}: safetensors header is not a JSON object")
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        total += int(end) - int(start)
    return total


# Bytes per element for ONNX TensorProto.DataType values (onnx.proto); 4-bit types count 1/2.
_ONNX_ITEMSIZE: dict[int, float] = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16,
    16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 0.5, 22: 0.5, 23: 0.5,
}  # fmt: skip
_ONNX_STRING = 8
_ONNX_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def onnx_bytes(path: Path) -> int:
    """Initializer bytes of an ONNX model (see the module doc); file sizes without ``onnx``."""
    try:
        onnx: Any = importlib.import_module("onnx")
    except ImportError:
        return path.stat().st_size + _external_files_bytes(path)
    model = onnx.load(str(path), load_external_data=False)
    graphs = [model.graph]
    tensors: list[Any] = []
    while graphs:  # subgraphs (If/Loop bodies) carry initializers too
        graph = graphs.pop()
        tensors.extend(graph.initializer)
        tensors.extend(s.values for s in graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    external: set[str] = set()
    total = 0
    for t in tensors:
        if t.data_location == _ONNX_EXTERNAL:
            entries = {e.key: e.value for e in t.external_data}
            if "location" in entries:
                external.add(entries["location"])
            continue
        total += _onnx_tensor_bytes(t)
    for location in sorted(external):
        file = path.parent / location
        if file.is_file():
            total += file.stat().st_size
    return total


def _onnx_tensor_bytes(t: Any) -> int:
    if t.raw_data:
        return len(t.raw_data)
    if t.data_type == _ONNX_STRING:
        return sum(len(s) for s in t.string_data)
    count = math.prod(int(n) for n in t.dims)
    return math.ceil(count * _ONNX_ITEMSIZE.get(t.data_type, 8))


def _external_files_bytes(onnx_path: Path) -> int:
    # Without the onnx package we cannot read which files the model names; by convention
    # exporters put them beside model.onnx under one of these names.
    files = [onnx_path.parent / n for n in ("model.onnx.data", "model.onnx_data", "model.data")]
    return sum(f.stat().st_size for f in files if f.is_file())


_READERS: dict[Platform, Callable[[Path], int]] = {
    Platform.TORCH_EXPORT: torch_archive_bytes,
    Platform.TORCHSCRIPT: torch_archive_bytes,
    Platform.ONNX: onnx_bytes,
    Platform.TENSORFLOW: savedmodel_bytes,
}
