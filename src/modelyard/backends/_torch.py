"""What the torch backends share: dtype mapping, tensor conversion and ``TorchModel``.

Private, and imported only from inside a torch backend's ``load``, so importing
``modelyard.backends`` never imports torch. Importing this module raises ImportError when torch
is missing, which the backends turn into BackendMissing.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from modelyard.devices import DeviceTarget
from modelyard.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from modelyard.tensors import DataType, Signature, format_shape

TORCH_TO_DATATYPE: dict[torch.dtype, DataType] = {
    torch.bool: DataType.BOOL,
    torch.uint8: DataType.UINT8,
    torch.uint16: DataType.UINT16,
    torch.uint32: DataType.UINT32,
    torch.uint64: DataType.UINT64,
    torch.int8: DataType.INT8,
    torch.int16: DataType.INT16,
    torch.int32: DataType.INT32,
    torch.int64: DataType.INT64,
    torch.float16: DataType.FP16,
    torch.float32: DataType.FP32,
    torch.float64: DataType.FP64,
}


def datatype_of(dtype: torch.dtype, what: str, source: Path) -> DataType:
    """The DataType of a torch dtype; InvalidArgument for types numpy cannot hold (bfloat16)."""
    try:
        return TORCH_TO_DATATYPE[dtype]
    except KeyError:
        raise InvalidArgument(
            f"{source}: {what} has dtype {dtype}, which modelyard cannot serve; supported: "
            + ", ".join(str(d).removeprefix("torch.") for d in TORCH_TO_DATATYPE)
        ) from None


def prepare(device: str, lazy_modules: tuple[str, ...]) -> None:
    """``Backend.prepare`` for the torch backends: import what loading imports lazily, and
    create the CUDA context on ``device``.

    ``lazy_modules`` are private torch modules, so one that a torch release does not have is
    skipped: a missing one only makes the first measurement less exact.
    """
    for name in lazy_modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    target = torch_device(DeviceTarget.parse(device))
    if target.type == "cuda":
        torch.empty(1, device=target)  # creates the context (and the allocator's first pool)


def torch_device(device: DeviceTarget) -> torch.device:
    """The torch device for ``device``; FailedPrecondition when that GPU is not visible."""
    if not device.is_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FailedPrecondition(
            f"device {device} was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})"
        )
    count = torch.cuda.device_count()
    if device.index >= count:
        raise FailedPrecondition(f"device {device} was requested but torch sees {count} GPU(s)")
    return torch.device("cuda", device.index)


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` holding ``array``; on the CPU it shares ``array``'s memory.

    Read-only arrays (for example ones viewing a request buffer) are copied first: torch tensors
    are always writable, and a model that writes into its input must not change the caller's data.
    """
    array = np.ascontiguousarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor if device.type == "cpu" else tensor.to(device)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous host array holding ``tensor``; no copy when it already is one on the CPU."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy())


def flatten_outputs(result: object) -> list[object]:
    """The leaves of a model's return value, in order: a tensor, or tuples/lists/dicts of them."""
    if isinstance(result, tuple | list):
        return [leaf for item in result for leaf in flatten_outputs(item)]
    if isinstance(result, dict):
        return [leaf for item in result.values() for leaf in flatten_outputs(item)]
    return [result]


class TorchModel:
    """A torch module loaded on one device, called with its inputs positionally in signature order.

    Thread safety: ``predict`` runs concurrently from many threads; the module is only read
    (``inference_mode`` is thread-local and records no autograd state). ``unload`` must not race
    with ``predict``; the server guarantees it runs after the last call.
    """

    def __init__(
        self, module: torch.nn.Module, signature: Signature, device: torch.device, source: Path
    ) -> None:
        self._module: torch.nn.Module | None = module
        self._signature = signature
        self._device = device
        self._source = source

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def module(self) -> torch.nn.Module:
        """The loaded module (for inspection: where its weights live, how many bytes)."""
        if self._module is None:
            raise Unavailable(f"{self._source} has been unloaded")
        return self._module

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self.module
        args = [to_tensor(inputs[spec.name], self._device) for spec in self._signature.inputs]
        try:
            with torch.inference_mode():
                result = module(*args)
        except torch.cuda.OutOfMemoryError as exc:
            raise ResourceExhausted(f"{self._source}: out of GPU memory on {self._device}") from exc
        except Exception as exc:
            # The data plane has already checked names, dtypes and shapes against the signature,
            # so what fails here is a constraint the signature cannot express (a guard on a
            # dynamic dimension, a data-dependent check): a bad request, not a broken server.
            raise InvalidArgument(
                f"the model rejected this input: {type(exc).__name__}: {exc}".strip()
            ) from exc
        return self._outputs(flatten_outputs(result))

    def _outputs(self, leaves: list[object]) -> dict[str, np.ndarray]:
        specs = self._signature.outputs
        if len(leaves) != len(specs):
            raise FailedPrecondition(
                f"{self._source} returned {len(leaves)} output(s) but its signature has "
                f"{len(specs)} ({', '.join(s.describe() for s in specs)}); fix the config's outputs"
            )
        outputs: dict[str, np.ndarray] = {}
        for spec, leaf in zip(specs, leaves, strict=True):
            if not isinstance(leaf, torch.Tensor):
                raise FailedPrecondition(
                    f"{self._source} returned a {type(leaf).__name__} for output {spec.name!r}; "
                    "modelyard serves tensor outputs only"
                )
            got = TORCH_TO_DATATYPE.get(leaf.dtype)
            if got is not spec.datatype or not spec.accepts_shape(leaf.shape):
                raise FailedPrecondition(
                    f"{self._source} returned {got.value if got else leaf.dtype} "
                    f"{format_shape(leaf.shape)} for output {spec.describe()}; fix the config's "
                    "outputs"
                )
            outputs[spec.name] = to_numpy(leaf)
        return outputs

    def unload(self) -> None:
        """Drop the module; on a GPU, return its cached blocks to the driver."""
        self._module = None
        # fx graph modules hold reference cycles; collect them so their CUDA tensors are freed
        # before empty_cache, which only releases blocks no tensor uses any more.
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
