"""A model version's memory footprint, estimated from its files without importing a framework.

    footprint = weights + overhead + workspace
    overhead  = 32 MiB + 10 % of weights   (runtime bookkeeping, graph, allocator slack)
                32 MiB +  3 % for TorchScript and torch.export (torch holds the tensors as
                stored: measured 1.004x the weights on an H200, 1.025x in CPU RSS)
    workspace = 10 % of weights, or 25 % when the model has `batching:` (activations of a batch)

The per-process cost of a framework (a CUDA context, the torch/onnxruntime libraries) is paid
once per device worker, not per model: it belongs in the device's headroom
(``headroom_fraction``), not here. Figures comparing these estimates with measured loads are in
docs/planner.md. Estimates aim to be an upper bound; a measured footprint, when recorded, wins
(see ``footprints``), and ``memory:`` in config wins over both.

Sizing reads headers and directories, never weights: memory stays flat whatever the model's
size, so it may run in the serving process (on a thread: it does disk I/O). Every way an
artifact can be unreadable -- not the format its name says, truncated, empty, a folder where
the file should be, sizes its directory cannot hold, an I/O error -- is one ``InvalidArgument``
from ``estimate_footprint`` naming the file, what was wrong and what was expected; no other
exception leaves it (this is the boundary where files from outside come in).

Weights, per artifact in a version folder:
- ONNX ``model.onnx``: initializer (and Constant node) tensor bytes, read by walking the
  protobuf without loading it (``onnxscan``), plus the sizes of the external data files it names.
- torch.export ``model.pt2`` / TorchScript ``model.pt``: zip archives; the sizes of their tensor
  data entries (``*/data/<n>``, ``*/constants/<n>``, ``*/data/weights/*``, ``*/data/constants/*``)
  from the zip's central directory.
- TF SavedModel ``saved_model.pb``: the files under ``variables/``.
- ``*.safetensors`` files beside any of these (or alone): tensor bytes from their JSON header.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelyard.config.schema import Platform
from modelyard.config.sizes import format_size
from modelyard.errors import InvalidArgument
from modelyard.planner.onnxscan import scan_onnx

MiB = 2**20
OVERHEAD_FIXED_BYTES = 32 * MiB
OVERHEAD_FRACTION = 0.10
OVERHEAD_FRACTION_BY_PLATFORM = {Platform.TORCHSCRIPT: 0.03, Platform.TORCH_EXPORT: 0.03}
"""Formats whose loads measured close to their weights (docs/planner.md, docs/gpu.md)."""
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
    """The platform whose artifact is in ``version_dir`` (first match in FORMATS); a folder in
    the artifact's place counts, so that sizing says what is wrong with it."""
    for platform in FORMATS:
        if (version_dir / platform.artifact).exists():
            return platform
    return None


def estimate_footprint(
    version_dir: Path, platform: Platform = Platform.AUTO, *, batching: bool = False
) -> Estimate:
    """Estimate the footprint of the version in ``version_dir`` (formula in the module doc).

    Raises InvalidArgument, naming the file and what was expected, when the folder holds no
    artifact this module can read (see the module doc); never any other exception.
    """
    try:
        if platform is Platform.AUTO:
            platform = detect_platform(version_dir) or Platform.AUTO
        weights = weights_bytes(version_dir, platform)
    except InvalidArgument:
        raise
    except OSError as exc:
        what = exc.filename or version_dir
        raise InvalidArgument(f"cannot read {what}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a reader meeting a file it did not foresee
        raise InvalidArgument(
            f"{version_dir} cannot be sized: {type(exc).__name__}: {exc}"
        ) from exc
    workspace = WORKSPACE_FRACTION_BATCHING if batching else WORKSPACE_FRACTION
    overhead = OVERHEAD_FRACTION_BY_PLATFORM.get(platform, OVERHEAD_FRACTION)
    return Estimate(
        weights_bytes=weights,
        overhead_bytes=OVERHEAD_FIXED_BYTES + math.ceil(weights * overhead),
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
    if artifact.is_dir():
        raise InvalidArgument(f"{artifact} is a folder; expected {_KIND[platform]}, one file")
    if not artifact.is_file():
        found = detect_platform(version_dir)
        if found is not None and found is not platform:
            raise InvalidArgument(
                f"{artifact} not found: platform: {platform.value} expects {platform.artifact}, "
                f"but {version_dir} holds {found.artifact} ({found.value}); set platform: "
                f"{found.value} or auto"
            )
        raise InvalidArgument(f"{artifact} not found for platform {platform.value}")
    if artifact.stat().st_size == 0:
        raise InvalidArgument(f"{artifact} is empty (0 bytes); expected {_KIND[platform]}")
    return reader(artifact) + extra


def torch_archive_bytes(path: Path, platform: Platform = Platform.TORCH_EXPORT) -> int:
    """Tensor bytes in a TorchScript or torch.export zip archive (uncompressed entry sizes).

    Reads the zip's central directory only. Raises InvalidArgument for a file that is not a
    zip, a zip that PyTorch did not write (for TorchScript: no ``<root>/data.pkl``; for
    torch.export: none of ``_TORCH_RECORDS`` and no tensor entry), or an entry whose declared
    size the archive cannot hold (a corrupt or forged directory).
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise InvalidArgument(
            f"{path} is not a torch archive: not a zip file ({exc}); expected a file written "
            f"by {_WRITER[platform]} (a truncated copy reads like this too)"
        ) from exc
    names = {PurePosixPath(i.filename).parts[1:] for i in infos}
    if platform is Platform.TORCHSCRIPT:
        torch_like = ("data.pkl",) in names
    else:
        torch_like = bool(_TORCH_RECORDS & names) or any(
            _is_tensor_entry(i.filename) for i in infos
        )
    if not torch_like:
        listed = ", ".join(sorted(i.filename for i in infos)[:5]) or "nothing"
        raise InvalidArgument(
            f"{path} is a zip archive but not {_KIND[platform]}: it holds {listed}, "
            f"not the records PyTorch writes under one root folder "
            f"({'<root>/data.pkl' if platform is Platform.TORCHSCRIPT else '<root>/version'}"
            f", ...); expected a file written by {_WRITER[platform]}"
        )
    for info in infos:
        _check_declared_size(path, size, info)
    return sum(i.file_size for i in infos if _is_tensor_entry(i.filename))


_TORCH_RECORDS = {("version",), (".data", "version"), ("archive_format",), ("data.pkl",)}
"""Records PyTorch's stream writer puts under an archive's root folder (any torch version)."""
_KIND = {
    Platform.TORCH_EXPORT: "a torch.export archive",
    Platform.TORCHSCRIPT: "a TorchScript archive",
    Platform.ONNX: "an ONNX model",
    Platform.TENSORFLOW: "a TensorFlow SavedModel",
}
_WRITER = {
    Platform.TORCH_EXPORT: "torch.export.save",
    Platform.TORCHSCRIPT: "torch.jit.save",
}
_DEFLATE_MAX_RATIO = 1032
"""Deflate cannot expand data more than this (RFC 1951: 258 bytes from 2 bits, plus blocks)."""


def _check_declared_size(path: Path, archive_bytes: int, info: zipfile.ZipInfo) -> None:
    stored = info.compress_type == zipfile.ZIP_STORED
    too_big = info.header_offset + info.compress_size > archive_bytes or (
        info.file_size != info.compress_size
        if stored
        else info.compress_type == zipfile.ZIP_DEFLATED
        and info.file_size > info.compress_size * _DEFLATE_MAX_RATIO + 64
    )
    if too_big:
        raise InvalidArgument(
            f"{path}: entry {info.filename!r} declares {format_size(info.file_size)} "
            f"({format_size(info.compress_size)} stored) but the archive is "
            f"{format_size(archive_bytes)}; the archive is corrupt or truncated"
        )


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


def onnx_bytes(path: Path) -> int:
    """Initializer bytes of an ONNX model plus the sizes of the external data files it names,
    read without loading it (``onnxscan``: flat memory, no framework)."""
    found = scan_onnx(path)
    total = found.inline_bytes
    for location in sorted(found.external):
        file = path.parent / location
        if file.is_file():
            total += file.stat().st_size
    return total


_READERS: dict[Platform, Callable[[Path], int]] = {
    Platform.TORCH_EXPORT: lambda p: torch_archive_bytes(p, Platform.TORCH_EXPORT),
    Platform.TORCHSCRIPT: lambda p: torch_archive_bytes(p, Platform.TORCHSCRIPT),
    Platform.ONNX: onnx_bytes,
    Platform.TENSORFLOW: savedmodel_bytes,
}
