"""Backends, one module per framework, imported lazily through this registry."""

from __future__ import annotations

import importlib
from pathlib import Path

from modelyard.backends.base import Backend, LoadedModel, MultiSignatureModel
from modelyard.config.schema import Platform
from modelyard.errors import BackendMissing, InvalidArgument

# platform -> (module, class, pip extra); the artifact file is ``platform.artifact``.
_REGISTRY: dict[Platform, tuple[str, str, str]] = {
    Platform.TORCH_EXPORT: ("modelyard.backends.torch_export", "TorchExportBackend", "torch"),
    Platform.TORCHSCRIPT: ("modelyard.backends.torchscript", "TorchScriptBackend", "torch"),
    Platform.ONNX: ("modelyard.backends.onnx", "OnnxBackend", "onnx"),
    Platform.TENSORFLOW: ("modelyard.backends.tensorflow", "SavedModelBackend", "tensorflow"),
}

# Names that Triton and KServe clients know these formats by (model metadata "platform").
PROTOCOL_PLATFORM: dict[Platform, str] = {
    Platform.TORCH_EXPORT: "pytorch_export",
    Platform.TORCHSCRIPT: "pytorch_libtorch",
    Platform.ONNX: "onnxruntime_onnx",
    Platform.TENSORFLOW: "tensorflow_savedmodel",
}


def artifact_name(platform: Platform) -> str:
    return platform.artifact


def detect_platform(version_dir: Path, configured: Platform = Platform.AUTO) -> Platform:
    """The platform of a version folder: the configured one, else the one whose file is there.

    InvalidArgument names the folder and what was expected: no model file, more than one, or
    a folder where the file should be (a TF SavedModel's ``saved_model.pb`` is a file too).
    """
    for platform in _REGISTRY:
        if (version_dir / platform.artifact).is_dir():
            raise InvalidArgument(
                f"{version_dir / platform.artifact} is a folder; a {platform.value} model is "
                "one file of that name"
            )
    if configured is not Platform.AUTO:
        artifact = configured.artifact
        if not (version_dir / artifact).is_file():
            raise InvalidArgument(
                f"{version_dir} has no {artifact}, which platform {configured.value} needs"
            )
        return configured
    found = [p for p in _REGISTRY if (version_dir / p.artifact).is_file()]
    if len(found) != 1:
        expected = ", ".join(f"{p.artifact} ({p.value})" for p in _REGISTRY)
        what = "no model file" if not found else "more than one model file"
        raise InvalidArgument(
            f"{version_dir} holds {what}; expected exactly one of {expected}, "
            "or set platform: in the config"
        )
    return found[0]


def get_backend(platform: Platform) -> Backend:
    """The backend for ``platform``; BackendMissing names the extra to install."""
    module_name, class_name, extra = _REGISTRY[platform]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendMissing(
            f"{platform.value} models need the '{extra}' extra ({exc.name} is not installed); "
            f"install it with: pip install 'modelyard[{extra}]'"
        ) from exc
    backend: Backend = getattr(module, class_name)()
    return backend


__all__ = [
    "PROTOCOL_PLATFORM",
    "Backend",
    "LoadedModel",
    "MultiSignatureModel",
    "artifact_name",
    "detect_platform",
    "get_backend",
]
