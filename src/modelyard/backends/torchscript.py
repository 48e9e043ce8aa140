"""TorchScript modules (``model.pt``, written by ``torch.jit.save``).

A TorchScript file names its arguments but carries no dtypes or shapes, so the signature comes
from the config's ``inputs:`` and ``outputs:``; inputs are passed to ``forward`` positionally in
that order. The output count is checked at load when the scripted return type says it, and every
output's dtype and shape at each call. torch is imported inside ``load`` only.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.backends.base import LoadedModel
from modelyard.backends.signatures import check_unique_names, reject_bytes
from modelyard.config.schema import Platform
from modelyard.devices import DeviceTarget
from modelyard.errors import BackendMissing, InvalidArgument
from modelyard.tensors import Signature

if TYPE_CHECKING:
    import torch


class TorchScriptBackend:
    """Loads ``model.pt`` onto ``cpu`` or ``cuda:N`` with the declared signature. Stateless."""

    platform = Platform.TORCHSCRIPT
    artifact = "model.pt"

    def prepare(self, device: str) -> None:
        from modelyard.backends import _torch

        _torch.prepare(device, ("torch.jit",))

    def load(
        self,
        version_dir: Path,
        device: str,
        declared: Signature | None,
        *,
        memory_cap_bytes: int | None = None,  # torch is capped per process, by its worker
    ) -> LoadedModel:
        """Load the module with ``torch.jit.load(map_location=device)`` and return a ``TorchModel``.

        Raises InvalidArgument when ``declared`` is None, when the file is missing or corrupt, or
        when the module's ``forward`` cannot take the declared inputs or return the declared
        number of outputs; BackendMissing without torch.
        """
        path = version_dir / self.artifact
        if declared is None:
            raise InvalidArgument(
                f"{path}: TorchScript models carry no signature; add inputs: and outputs: to "
                "the model's config"
            )
        target = DeviceTarget.parse(device)
        check_unique_names(declared, path)
        reject_bytes(declared, path, "TorchScript")
        try:
            from modelyard.backends import _torch
        except ImportError as exc:
            raise BackendMissing(
                f"TorchScript models need torch ({exc.name} is not installed); "
                "install it with: pip install 'modelyard[torch]'"
            ) from exc
        torch_device = _torch.torch_device(target)
        module = _read_module(path, torch_device)
        _check_forward(module, declared, path)
        module.eval()
        return _torch.TorchModel(module, declared, torch_device, path)


def _read_module(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    import torch

    if not path.is_file():
        raise InvalidArgument(f"{path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        raise InvalidArgument(
            f"{path} is not a TorchScript archive (not a zip file; truncated or corrupt?); "
            "write it with torch.jit.save"
        )
    try:
        # torch.jit.load warns that TorchScript is deprecated on every call; the operator chose
        # the format, so the warning only adds noise to the worker's log.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                path, map_location=device
            )
    except Exception as exc:
        raise InvalidArgument(
            f"{path} cannot be loaded as a TorchScript module by torch {torch.__version__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return module


def _check_forward(module: torch.jit.ScriptModule, declared: Signature, path: Path) -> None:
    """Check the declared counts against ``forward``'s schema, where the schema says them."""
    import torch

    try:
        schema = module.forward.schema  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return
    # The first schema argument is the module itself, whatever its name.
    arguments = list(schema.arguments)[1:]
    required = [a for a in arguments if not a.has_default_value()]
    if not len(required) <= len(declared.inputs) <= len(arguments):
        raise InvalidArgument(
            f"{path}: the config declares {len(declared.inputs)} input(s) "
            f"({declared.describe_inputs()}) but forward takes "
            f"{', '.join(a.name for a in arguments) or 'none'}"
        )
    if len(schema.returns) != 1:
        return
    returned = schema.returns[0].type
    if isinstance(returned, torch.TupleType):
        count = len(returned.elements())
    elif isinstance(returned, torch.TensorType):
        count = 1
    else:
        return
    if count != len(declared.outputs):
        raise InvalidArgument(
            f"{path}: the config declares {len(declared.outputs)} output(s) "
            f"({', '.join(s.describe() for s in declared.outputs)}) but forward returns "
            f"{returned}"
        )
