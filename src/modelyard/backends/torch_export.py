"""torch.export programs (``model.pt2``, written by ``torch.export.save``).

The artifact carries its signature: input names are the program's user-input placeholders,
dtypes and shapes come from their traced values (a symbolic dimension is served as ``-1``), and
outputs are named ``output_0``, ``output_1``, ... in the order the program returns them, unless
the config renames them. torch is imported inside ``load`` only.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.backends.base import LoadedModel
from modelyard.backends.signatures import check_unique_names, reconcile, reject_bytes
from modelyard.config.schema import Platform
from modelyard.devices import DeviceTarget
from modelyard.errors import BackendMissing, InvalidArgument
from modelyard.tensors import Signature, TensorSpec

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram


class TorchExportBackend:
    """Loads ``model.pt2`` onto ``cpu`` or ``cuda:N``. Stateless."""

    platform = Platform.TORCH_EXPORT
    artifact = "model.pt2"

    def prepare(self, device: str) -> None:
        from modelyard.backends import _torch

        # What torch.export.load and ExportedProgram.module() import on first use (measured
        # with torch 2.13: about 90 MiB of RSS that would otherwise be charged to one model).
        _torch.prepare(
            device,
            (
                "torch.export",
                "torch._export.serde.serialize",
                "torch._functorch.aot_autograd",
                "torch._inductor",
                "networkx",
            ),
        )

    def load(
        self,
        version_dir: Path,
        device: str,
        declared: Signature | None,
        *,
        memory_cap_bytes: int | None = None,  # torch is capped per process, by its worker
    ) -> LoadedModel:
        """Deserialize the program, move its weights to ``device`` and return a ``TorchModel``.

        Raises InvalidArgument for a missing, corrupt or unsupported artifact (nested or keyword
        inputs, non-tensor inputs or outputs, bfloat16) or a declared signature that disagrees
        with it; BackendMissing without torch; FailedPrecondition when the GPU is not visible.
        """
        path = version_dir / self.artifact
        target = DeviceTarget.parse(device)
        try:
            from modelyard.backends import _torch
        except ImportError as exc:
            raise BackendMissing(
                f"torch.export models need torch ({exc.name} is not installed); "
                "install it with: pip install 'modelyard[torch]'"
            ) from exc
        torch_device = _torch.torch_device(target)
        program = _read_program(path)
        signature = reconcile(_signature_of(program, path), declared, path)
        check_unique_names(signature, path)
        reject_bytes(signature, path, "torch.export")
        if torch_device.type != "cpu":
            # Unlike Module.to, this pass also rewrites device arguments baked into the graph
            # (torch.zeros(..., device="cpu") traced at export time).
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, torch_device)
        try:
            module = program.module()
        except Exception as exc:
            raise InvalidArgument(f"{path}: cannot build a module from the program: {exc}") from exc
        # No module.eval(): the program was traced in one mode, and exported modules refuse it.
        return _torch.TorchModel(module, signature, torch_device, path)


_LOAD_LOCK = threading.Lock()


def _read_program(path: Path) -> ExportedProgram:
    import torch

    if not path.is_file():
        raise InvalidArgument(f"{path} does not exist or is not a file")
    # A .pt2 file is a zip archive. Checking first gives a clear message for a truncated or
    # foreign file, instead of torch.export.load logging a traceback before it fails.
    if not zipfile.is_zipfile(path):
        raise InvalidArgument(
            f"{path} is not a torch.export archive (not a zip file; truncated or corrupt?); "
            "write it with torch.export.save"
        )
    try:
        # torch.export.load keeps its deserializer in module-global state and asserts when two
        # threads load at once, so loads of different versions must take turns.
        with _LOAD_LOCK:
            return torch.export.load(path)
    except Exception as exc:
        raise InvalidArgument(
            f"{path} cannot be loaded as a torch.export program by torch {torch.__version__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _signature_of(program: ExportedProgram, path: Path) -> Signature:
    """The signature the program carries: user inputs by placeholder name, outputs by position."""
    import torch.utils._pytree as pytree
    from torch.export.graph_signature import InputKind, OutputKind

    graph_signature = program.graph_signature
    placeholders = [node for node in program.graph.nodes if node.op == "placeholder"]
    if len(placeholders) != len(graph_signature.input_specs):
        raise InvalidArgument(f"{path}: the program's graph and its signature disagree")
    inputs = tuple(
        _tensor_spec(node.name, node.meta.get("val"), f"input {node.name!r}", path)
        for node, spec in zip(placeholders, graph_signature.input_specs, strict=True)
        if spec.kind is InputKind.USER_INPUT
    )
    # The server calls module(*tensors); that matches only a program traced with flat
    # positional tensor arguments.
    expected_in = pytree.tree_structure((tuple(range(len(inputs))), {}))
    if program.call_spec.in_spec is not None and program.call_spec.in_spec != expected_in:
        raise InvalidArgument(
            f"{path}: the program takes nested or keyword inputs; modelyard calls a model with "
            "its input tensors as positional arguments, so export it with flat tensor arguments"
        )
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    returned = output_node.args[0]
    if len(returned) != len(graph_signature.output_specs):
        raise InvalidArgument(f"{path}: the program's graph and its signature disagree")
    user_outputs = [
        value
        for value, spec in zip(returned, graph_signature.output_specs, strict=True)
        if spec.kind is OutputKind.USER_OUTPUT
    ]
    outputs = tuple(
        _tensor_spec(
            f"output_{i}",
            getattr(value, "meta", {}).get("val"),
            f"output {i}",
            path,
        )
        for i, value in enumerate(user_outputs)
    )
    return Signature(inputs, outputs)


def _tensor_spec(name: str, value: object, what: str, path: Path) -> TensorSpec:
    import torch

    from modelyard.backends import _torch

    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(
            f"{path}: {what} is a {type(value).__name__}, not a tensor; modelyard serves "
            "programs whose inputs and outputs are all tensors"
        )
    return TensorSpec(
        name,
        _torch.datatype_of(value.dtype, what, path),
        tuple(_dim(d) for d in value.shape),
    )


def _dim(size: int | torch.SymInt) -> int:
    """A traced dimension: its size when static, -1 when symbolic (dynamic)."""
    return size if isinstance(size, int) else -1
