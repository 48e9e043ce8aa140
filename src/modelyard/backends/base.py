"""The seam between the server and ML frameworks: ``Backend`` loads, ``LoadedModel`` predicts.

A backend module imports its framework only inside ``load`` (never at import time), so a server
without torch can still serve ONNX models and ``modelyard plan`` imports no framework at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from modelyard.config.schema import Platform
from modelyard.tensors import Signature


@runtime_checkable
class LoadedModel(Protocol):
    """A model version loaded on one device.

    ``predict`` is blocking and thread-safe: the server calls it from worker threads, possibly
    concurrently. Inputs have already been checked against ``signature`` (names, dtypes, shapes);
    outputs are returned as host numpy arrays keyed by the signature's output names.
    ``unload`` releases the framework's memory for this model; it is called exactly once, and
    ``predict`` is never called after it.
    """

    @property
    def signature(self) -> Signature: ...

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def unload(self) -> None: ...


@runtime_checkable
class MultiSignatureModel(LoadedModel, Protocol):
    """A ``LoadedModel`` with several named signatures (a SavedModel's ``signature_def``s).

    ``signatures`` maps each name to its signature; ``signature`` is the default one
    (``serving_default`` when the model has it) and ``predict`` runs it. ``predict_signature``
    runs the named one, with the same contract as ``predict``; KeyError never escapes it:
    an unknown name raises InvalidArgument. Models with one signature need not implement this.
    """

    @property
    def signatures(self) -> Mapping[str, Signature]: ...

    def predict_signature(
        self, inputs: Mapping[str, np.ndarray], signature_name: str
    ) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    """Loads one model format. Stateless: one instance serves every model of its platform."""

    platform: Platform
    artifact: str
    """The file a version folder holds for this format, e.g. ``model.onnx``."""

    def prepare(self, device: str) -> None:
        """Pay the framework's one-time costs in this process, on ``device``, before any load.

        Imports what ``load`` would import lazily and, on a GPU, creates the framework's
        context there. A worker calls it before taking the memory baseline of its first load,
        so a model's measured footprint is the model's, not the framework's (a CUDA context is
        hundreds of MiB, and belongs to the device's headroom, not to whichever model loads
        first). Idempotent and cheap after the first call; raises what ``load`` would raise
        when the framework is missing or the device is not there.
        """
        ...

    def load(
        self,
        version_dir: Path,
        device: str,
        declared: Signature | None,
        *,
        memory_cap_bytes: int | None = None,
    ) -> LoadedModel:
        """Load the artifact in ``version_dir`` onto ``device`` (``cpu`` or ``cuda:N``).

        ``memory_cap_bytes``: the device's memory cap (a GPU slice's size), None for none. A
        framework that caps per model caps this model's memory at it (ONNX Runtime's
        ``gpu_mem_limit``); one that caps per process (torch) is capped by its worker process
        before its first load (``modelyard.workers.host``) and ignores it here.

        ``declared`` is the signature from config. Formats that carry a signature (ONNX,
        torch.export) use the artifact's and check ``declared`` against it when given (names
        from config may rename positional inputs/outputs); formats without one (TorchScript)
        require it. Raises ``InvalidArgument`` for a corrupt or mismatched artifact and
        ``BackendMissing`` when the framework is not installed.
        """
        ...
