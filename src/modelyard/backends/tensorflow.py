"""TensorFlow SavedModels (``saved_model.pb`` and ``variables/``), the format TF Serving serves.

The artifact carries its signatures: every ``signature_def`` of the SavedModel's serving graph,
each with its inputs and outputs (dtype, shape with ``-1`` for an unknown dimension, ``DT_STRING``
served as BYTES) and its ``method_name`` (predict, classify or regress). ``serving_default``
is the default signature; a model without one serves its first signature by name as default.
tensorflow is imported inside ``load`` only.

Each model runs on the device it was loaded for (``/GPU:N`` or ``/CPU:0``); GPU memory growth is
turned on before TensorFlow first touches a GPU, so a model takes what it needs rather than the
whole device TF Serving would grab.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.backends.base import MultiSignatureModel
from modelyard.backends.signatures import check_unique_names, reconcile
from modelyard.config.schema import Platform
from modelyard.devices import DeviceTarget
from modelyard.errors import (
    BackendMissing,
    InvalidArgument,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
)
from modelyard.tensors import (
    DEFAULT_SIGNATURE,
    DataType,
    Signature,
    SignatureMethod,
    TensorSpec,
    signature_named,
)

log = logging.getLogger(__name__)

_SERVE_TAG = "serve"
_GPU_SETUP = threading.Lock()
_gpu_ready = False


class SavedModelBackend:
    """Loads a SavedModel folder onto ``cpu`` or ``cuda:N``. Stateless."""

    platform = Platform.TENSORFLOW
    artifact = "saved_model.pb"

    def prepare(self, device: str) -> None:
        """Import tensorflow, turn memory growth on, and start its runtime on ``device``."""
        target = DeviceTarget.parse(device)
        tf = _import_tf()
        _enable_memory_growth(tf)
        with tf.device(f"/GPU:{target.index}" if target.is_cuda else "/CPU:0"):
            tf.constant(0.0) + 1.0  # the first op creates the device's context and allocator

    def load(
        self,
        version_dir: Path,
        device: str,
        declared: Signature | None,
        *,
        memory_cap_bytes: int | None = None,  # TensorFlow has no per-model cap: not applied
    ) -> MultiSignatureModel:
        """Load the SavedModel in ``version_dir`` and return a ``SavedModelModel``.

        ``declared`` (from config) is reconciled with the default signature only. Raises
        InvalidArgument for a missing or corrupt SavedModel, one with no signatures, a tensor
        type modelyard cannot serve, or a declared signature that disagrees with the model's;
        BackendMissing without tensorflow.
        """
        target = DeviceTarget.parse(device)
        path = version_dir / self.artifact
        tf = _import_tf()
        from tensorflow.core.protobuf import saved_model_pb2

        if not path.is_file():
            raise InvalidArgument(f"{path} does not exist or is not a file")
        _enable_memory_growth(tf)
        defs = _signature_defs(path, saved_model_pb2.SavedModel)
        tf_device = f"/GPU:{target.index}" if target.is_cuda else "/CPU:0"
        try:
            with tf.device(tf_device):
                loaded = tf.saved_model.load(str(version_dir), tags=[_SERVE_TAG])
        except Exception as exc:  # TF raises a zoo of types for a broken SavedModel
            raise InvalidArgument(
                f"{version_dir} cannot be loaded by tensorflow {tf.__version__} (truncated, "
                f"corrupt or not a SavedModel?): {type(exc).__name__}: {exc}"
            ) from exc
        functions = dict(loaded.signatures)
        signatures = {
            name: _signature(defs[name], name, version_dir)
            for name in sorted(functions)
            if name in defs
        }
        if not signatures:
            raise InvalidArgument(
                f"{version_dir} has no serving signatures; export it with "
                "tf.saved_model.save(model, path, signatures=...)"
            )
        default = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in signatures else next(iter(signatures))
        own = signatures[default]
        signatures[default] = reconcile(own, declared, path)
        for signature in signatures.values():
            check_unique_names(signature, path)
        # The config may rename the default signature's tensors; TF is fed and read by its own.
        renames = {
            default: (
                {
                    a.name: b.name
                    for a, b in zip(signatures[default].inputs, own.inputs, strict=True)
                },
                {
                    a.name: b.name
                    for a, b in zip(signatures[default].outputs, own.outputs, strict=True)
                },
            )
        }
        return SavedModelModel(
            loaded, functions, signatures, default, renames, tf_device, version_dir
        )


class SavedModelModel:
    """A loaded SavedModel. ``predict``/``predict_signature`` are thread-safe (TF functions are)."""

    def __init__(
        self,
        loaded: Any,
        functions: dict[str, Any],
        signatures: dict[str, Signature],
        default: str,
        renames: dict[str, tuple[dict[str, str], dict[str, str]]],
        tf_device: str,
        source: Path,
    ) -> None:
        self._loaded: Any = loaded
        self._functions = functions
        self._signatures = signatures
        self._default = default
        self._renames = renames
        self._device = tf_device
        self._source = source

    @property
    def signature(self) -> Signature:
        return self._signatures[self._default]

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    @property
    def device(self) -> str:
        """The TensorFlow device the model runs on (``/GPU:0``, ``/CPU:0``)."""
        return self._device

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.predict_signature(inputs, self._default)

    def predict_signature(
        self, inputs: Mapping[str, np.ndarray], signature_name: str
    ) -> dict[str, np.ndarray]:
        if self._loaded is None:
            raise Unavailable(f"{self._source} has been unloaded")
        signature = signature_named(self._signatures, signature_name)
        import tensorflow as tf

        function = self._functions[signature_name]
        own_inputs, own_outputs = self._renames.get(signature_name, ({}, {}))
        try:
            with tf.device(self._device):
                feed = {
                    own_inputs.get(spec.name, spec.name): tf.constant(inputs[spec.name])
                    for spec in signature.inputs
                }
                results = function(**feed)
        except tf.errors.ResourceExhaustedError as exc:
            raise ResourceExhausted(f"{self._source}: out of memory on {self._device}") from exc
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            # Inputs have been checked against the signature already; what fails here is a
            # constraint it cannot express (related dimensions, values out of range).
            raise InvalidArgument(f"the model rejected this input: {exc}") from exc
        return {
            spec.name: np.asarray(results[own_outputs.get(spec.name, spec.name)].numpy())
            for spec in signature.outputs
        }

    def unload(self) -> None:
        """Drop the model's objects; TensorFlow frees their variables with them."""
        self._loaded = None
        self._functions = {}


def _import_tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise BackendMissing(
            f"TensorFlow SavedModels need tensorflow ({exc.name} is not installed); "
            "install it with: pip install 'modelyard[tensorflow]'"
        ) from exc
    return tf


def _enable_memory_growth(tf: Any) -> None:
    """Turn on memory growth for every visible GPU, once, before TensorFlow initializes them."""
    global _gpu_ready
    with _GPU_SETUP:
        if _gpu_ready:
            return
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialized (e.g. by code outside modelyard)
                log.warning("TensorFlow had initialized %s already; memory growth is off", gpu)
        _gpu_ready = True


def _signature_defs(path: Path, saved_model_type: Any) -> dict[str, Any]:
    """The ``signature_def`` map of the serving MetaGraph, read from ``saved_model.pb``.

    Read from the proto (not the loaded functions) because only it has each signature's
    ``method_name``, and its tensor names are the ones TF Serving serves.
    """
    message = saved_model_type()
    try:
        message.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, or a truncated read
        raise InvalidArgument(
            f"{path} is not a SavedModel (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    for meta_graph in message.meta_graphs:
        if _SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise InvalidArgument(f"{path} has no MetaGraph tagged {_SERVE_TAG!r}")


def _signature(signature_def: Any, name: str, source: Path) -> Signature:
    try:
        method = SignatureMethod(signature_def.method_name or SignatureMethod.PREDICT.value)
    except ValueError:
        log.warning(
            "%s: signature %r has method_name %r; served as predict",
            source,
            name,
            signature_def.method_name,
        )
        method = SignatureMethod.PREDICT
    return Signature(
        inputs=tuple(
            _spec(key, info, f"signature {name!r} input", source)
            for key, info in sorted(signature_def.inputs.items())
        ),
        outputs=tuple(
            _spec(key, info, f"signature {name!r} output", source)
            for key, info in sorted(signature_def.outputs.items())
        ),
        method=method,
    )


def _spec(key: str, info: Any, what: str, source: Path) -> TensorSpec:
    from tensorflow.core.framework import types_pb2

    dtype_name = types_pb2.DataType.Name(info.dtype)
    try:
        datatype = DataType.parse(dtype_name)
    except ModelyardError:
        raise InvalidArgument(
            f"{source}: {what} {key!r} has type {dtype_name}, which modelyard cannot serve"
        ) from None
    if info.tensor_shape.unknown_rank:
        raise InvalidArgument(
            f"{source}: {what} {key!r} has unknown rank; export it with a fixed rank "
            "(tf.TensorSpec(shape=[None, ...]))"
        )
    shape = tuple(d.size if d.size >= 0 else -1 for d in info.tensor_shape.dim)
    return TensorSpec(key, datatype, shape)


__all__ = ["SavedModelBackend", "SavedModelModel"]
