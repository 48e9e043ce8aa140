"""The ``Servable`` protocol: what the data plane calls to run a model, wherever it lives.

A ``Servable`` may be a model loaded in this process (``modelyard.lifecycle.servable
.LocalServable``), a proxy to a model in a per-device worker process
(``modelyard.workers.client.WorkerServable``), or a batcher wrapped around either
(``modelyard.batching.DynamicBatcher``). The data plane does not know which. This is the one
definition of the protocol, in the bottom layer so that batching, lifecycle, workers and the
server all import it from here without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from modelyard.tensors import Signature


class Servable(Protocol):
    """An async handle on one loaded replica of one model version.

    ``signature`` is the default signature; ``signatures`` maps every signature name to its
    signature, the default one included (``{"serving_default": signature}`` for a model with one
    signature). ``infer`` runs the signature named ``signature_name`` (None: the default one) on
    inputs already validated against it and returns every output of that signature; a name the
    model lacks is InvalidArgument (``modelyard.tensors.unknown_signature``). Only the default
    signature (``signature_name`` None) may be batched. ``close`` releases the model; ``infer``
    is not called after it.
    """

    @property
    def signature(self) -> Signature: ...

    @property
    def signatures(self) -> Mapping[str, Signature]: ...

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...
