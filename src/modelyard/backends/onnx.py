"""ONNX models (``model.onnx``), run by ONNX Runtime.

The artifact carries its signature: the session's inputs and outputs with their element types
and shapes (a symbolic or unknown dimension is served as ``-1``). onnxruntime is imported inside
``load`` only.

``MODELYARD_INTRA_OP_THREADS`` sets each session's intra-op thread count. Unset, a CPU session
gets ONNX Runtime's pool (a thread per physical core), except a model whose call is short: one
call at one row is timed at load, and under ``SHORT_CALL_S`` the session is made again with one
thread. A pool cannot split so small a call, and its threads spin after every call (hundreds of
microseconds of CPU per request, on the cores the front end needs: issue 18).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.backends.base import LoadedModel
from modelyard.backends.signatures import check_unique_names, reconcile, reject_bytes
from modelyard.config.schema import Platform
from modelyard.devices import DeviceTarget
from modelyard.errors import (
    BackendMissing,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from modelyard.tensors import DataType, Signature, TensorSpec

log = logging.getLogger(__name__)

THREADS_ENV = "MODELYARD_INTRA_OP_THREADS"
# A call at one row under this runs on one thread (see the module docstring). The tiny
# benchmark model's call takes about 20 us, the medium one's about 10 ms: far on either side.
SHORT_CALL_S = 0.001
_TIMED_CALLS = 5

_ORT_TYPES: dict[str, DataType] = {
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(uint16)": DataType.UINT16,
    "tensor(uint32)": DataType.UINT32,
    "tensor(uint64)": DataType.UINT64,
    "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16,
    "tensor(float)": DataType.FP32,
    "tensor(double)": DataType.FP64,
    "tensor(string)": DataType.BYTES,
}


class OnnxBackend:
    """Loads ``model.onnx`` into an ONNX Runtime session on ``cpu`` or ``cuda:N``. Stateless."""

    platform = Platform.ONNX
    artifact = "model.onnx"

    def prepare(self, device: str) -> None:
        """Import onnxruntime and start its environment (and CUDA, on a GPU) with a one-node
        session, so the first real model's measured footprint is its own."""
        target = DeviceTarget.parse(device)
        ort = _import_ort()
        try:
            from onnx import TensorProto, helper
        except ImportError:
            return  # the onnx package builds the tiny model; without it, load pays this once
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warmup", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=_session_options(ort),
            providers=_providers(ort, target, None),
        )
        session.run(None, {"x": np.zeros(1, np.float32)})

    def load(
        self,
        version_dir: Path,
        device: str,
        declared: Signature | None,
        *,
        memory_cap_bytes: int | None = None,
    ) -> LoadedModel:
        """Create the session and return an ``OnnxModel``.

        On ``cuda:N`` the session uses CUDAExecutionProvider on device N and fails with
        FailedPrecondition when this onnxruntime has no CUDA support or cannot start it, rather
        than silently running on the CPU. Raises InvalidArgument for a missing or corrupt file,
        an unsupported tensor type, or a declared signature that disagrees with the model's;
        BackendMissing without onnxruntime.
        """
        path = version_dir / self.artifact
        target = DeviceTarget.parse(device)
        ort = _import_ort()
        if not path.is_file():
            raise InvalidArgument(f"{path} does not exist or is not a file")
        providers = _providers(ort, target, memory_cap_bytes)
        options = _session_options(ort)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise InvalidArgument(
                f"{path} cannot be loaded by onnxruntime {ort.__version__} (truncated, corrupt or "
                f"not an ONNX model?): {type(exc).__name__}: {exc}"
            ) from exc
        if target.is_cuda and session.get_providers()[0] != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU when the CUDA libraries fail to load; a model
            # planned onto a GPU must not quietly run elsewhere.
            raise FailedPrecondition(
                f"onnxruntime could not start CUDA on {target} for {path} (missing CUDA or cuDNN "
                "libraries?); it would have run on the CPU"
            )
        artifact = Signature(
            tuple(_spec(arg, "input", path) for arg in session.get_inputs()),
            tuple(_spec(arg, "output", path) for arg in session.get_outputs()),
        )
        signature = reconcile(artifact, declared, path)
        check_unique_names(signature, path)
        reject_bytes(signature, path, "ONNX")
        if not target.is_cuda and _intra_op_threads() is None and _short_call(session, artifact):
            del session  # freed before the second one is made: the load measures one session
            session = ort.InferenceSession(
                str(path), sess_options=_session_options(ort, threads=1), providers=providers
            )
        return OnnxModel(session, signature, artifact, target, path)


class OnnxModel:
    """An ONNX Runtime session. ``predict`` is thread-safe (``InferenceSession.run`` is)."""

    def __init__(
        self,
        session: Any,
        signature: Signature,
        artifact: Signature,
        device: DeviceTarget,
        source: Path,
    ) -> None:
        self._session: Any = session
        self._run: Callable[[list[str], dict[str, np.ndarray]], list[Any]] | None = _runner(session)
        self._signature = signature
        # The session is fed and read by the artifact's names; the signature may rename them.
        self._input_names = [
            (served.name, own.name)
            for served, own in zip(signature.inputs, artifact.inputs, strict=True)
        ]
        self._output_names = [s.name for s in artifact.outputs]
        self._served_outputs = [s.name for s in signature.outputs]
        self._device = device
        self._source = source

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> DeviceTarget:
        return self._device

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses, preferred first."""
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def provider_options(self) -> dict[str, dict[str, str]]:
        """Each provider's options as the session applied them (e.g. ``gpu_mem_limit``)."""
        if self._session is None:
            return {}
        return {k: dict(v) for k, v in self._session.get_provider_options().items()}

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = self._run
        if run is None:
            raise Unavailable(f"{self._source} has been unloaded")
        feed = {own: np.ascontiguousarray(inputs[served]) for served, own in self._input_names}
        try:
            results = run(self._output_names, feed)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if "Failed to allocate memory" in message or "out of memory" in message:
                raise ResourceExhausted(f"{self._source}: out of memory on {self._device}") from exc
            # Inputs have been checked against the signature already; what fails here is a
            # constraint it cannot express (related dimensions, values out of range).
            raise InvalidArgument(f"the model rejected this input: {message}") from exc
        # One result per name asked for (``_output_names``), in that order; zip's strict= is a
        # keyword call, dearer than the rest of this line.
        outputs = zip(self._served_outputs, results)  # noqa: B905
        return {name: np.asarray(value) for name, value in outputs}

    def unload(self) -> None:
        """Drop the session; ONNX Runtime frees its memory (GPU arena included) with it."""
        self._run = None
        self._session = None


def _runner(session: Any) -> Callable[[list[str], dict[str, np.ndarray]], list[Any]]:
    """How ``predict`` runs ``session``: its C++ ``run`` straight away on a CPU-only session,
    else ``InferenceSession.run``.

    The Python wrapper's checks (every input named, no foreign ``OrtValue``, no CUDA graph
    options) hold by construction here (``predict`` feeds exactly the artifact's inputs as
    numpy arrays), and its one other service, falling back to the CPU when a GPU provider
    fails, does not apply to a CPU-only session; they cost about 4 µs of the tiny model's
    ~30 µs call (in process, interleaved; issue 18). A wrapper without the inner session
    (another onnxruntime release) keeps its own ``run``, and so does one whose inner ``run``
    refuses these arguments (a ``TypeError``, from the first call on)."""
    inner = getattr(session, "_sess", None)
    direct: Callable[..., list[Any]] | None = getattr(inner, "run", None)
    wrapped: Callable[[list[str], dict[str, np.ndarray]], list[Any]] = session.run
    if direct is None or list(session.get_providers()) != ["CPUExecutionProvider"]:
        return wrapped
    inner_run: Callable[..., list[Any]] | None = direct

    def run(names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        nonlocal inner_run
        if inner_run is not None:
            try:
                return inner_run(names, feed, None)
            except TypeError:
                # The binding's arguments changed (another onnxruntime release): the wrapper's
                # own run from now on, rather than every request refused as a bad input.
                inner_run = None
                log.warning("onnxruntime's session run takes other arguments; using its "
                            "wrapper's run")  # fmt: skip
        return wrapped(names, feed)

    return run


def _intra_op_threads() -> int | None:
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        threads = int(raw)
    except ValueError:
        threads = -1
    if threads < 0:
        raise InvalidArgument(
            f"{THREADS_ENV}={raw!r} must be a whole number of threads (0 lets onnxruntime pick)"
        )
    return threads


def _spec(arg: Any, side: str, path: Path) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg (``name``, ``type``, ``shape``)."""
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise InvalidArgument(
            f"{path}: {side} {arg.name!r} has type {arg.type}, which modelyard cannot serve; "
            "supported: " + ", ".join(_ORT_TYPES)
        )
    shape = arg.shape if arg.shape is not None else []
    # Symbolic dimensions arrive as strings ("batch"), unknown ones as None.
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorSpec(arg.name, datatype, dims)


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendMissing(
            f"ONNX models need onnxruntime ({exc.name} is not installed); "
            "install it with: pip install 'modelyard[onnx]' "
            "(or onnxruntime-gpu for CUDA devices)"
        ) from exc
    return ort


def _providers(ort: Any, target: DeviceTarget, memory_cap_bytes: int | None) -> list[Any]:
    """The execution providers for ``target``, its CUDA arena capped at ``memory_cap_bytes``;
    FailedPrecondition for a GPU this onnxruntime cannot use (never a silent fallback to the
    CPU)."""
    if not target.is_cuda:
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise FailedPrecondition(
            f"device {target} was requested but onnxruntime {ort.__version__} has no "
            f"CUDA support (providers: {', '.join(available)}); "
            "install onnxruntime-gpu instead of onnxruntime"
        )
    cuda_options: dict[str, Any] = {"device_id": target.index}
    if memory_cap_bytes:
        # A GPU slice: cap this session's arena at the slice, as torch's allocator is capped
        # (ORT caps per session, not per process).
        cuda_options["gpu_mem_limit"] = memory_cap_bytes
    return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]


def _short_call(session: Any, artifact: Signature) -> bool:
    """Whether one call of ``session`` at one row takes under ``SHORT_CALL_S`` (the fastest of
    a few, zeros as input). False when it cannot be told: an input with a dynamic dimension
    other than the first (a sequence length: one step says nothing of a real request's cost),
    or a call that fails on zeros."""
    feed = {}
    for spec in artifact.inputs:
        if any(d < 0 for d in spec.shape[1:]):
            return False
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        feed[spec.name] = np.zeros(shape, spec.datatype.numpy)
    fastest = float("inf")
    try:
        for _ in range(_TIMED_CALLS):
            began = time.perf_counter()
            session.run(None, feed)
            fastest = min(fastest, time.perf_counter() - began)
    except Exception:
        return False
    return fastest < SHORT_CALL_S


def _session_options(ort: Any, threads: int | None = None) -> Any:
    options = ort.SessionOptions()
    if threads is None:
        threads = _intra_op_threads()
    if threads is not None:
        options.intra_op_num_threads = threads
    # Warnings (unassigned nodes, unused initializers) would repeat for every load; errors
    # still reach the log and every failure reaches the caller as an exception.
    options.log_severity_level = 3
    return options
