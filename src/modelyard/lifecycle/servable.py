"""What the data plane calls to run a model: an async ``Servable``, wherever the model lives.

A ``Servable`` may be a model loaded in this process (``LocalServable``, which runs the blocking
``predict`` on a thread pool), a proxy to a model in a per-device worker process
(``modelyard.workers.client.WorkerServable``), or a batcher wrapped around either
(``modelyard.batching.DynamicBatcher``). The data plane does not know which. This is the one
definition of the protocol; every implementation and caller imports it from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from modelyard.backends.base import LoadedModel, MultiSignatureModel
from modelyard.tensors import DEFAULT_SIGNATURE, Signature, unknown_signature


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


class LocalServable:
    """A ``LoadedModel`` in this process; ``predict`` runs on the shared inference thread pool."""

    def __init__(self, model: LoadedModel, pool: ThreadPoolExecutor) -> None:
        self._model = model
        self._pool = pool
        self._signature = model.signature
        # Decided once here, not per request (a runtime-checkable isinstance is not free).
        self._multi: MultiSignatureModel | None = (
            model if isinstance(model, MultiSignatureModel) else None
        )
        self._signatures: Mapping[str, Signature] = (
            self._multi.signatures
            if self._multi is not None
            else {DEFAULT_SIGNATURE: self._signature}
        )

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if signature_name is None:
            return await loop.run_in_executor(self._pool, self._model.predict, inputs)
        if self._multi is not None:
            return await loop.run_in_executor(
                self._pool, self._multi.predict_signature, inputs, signature_name
            )
        if signature_name != DEFAULT_SIGNATURE:
            raise unknown_signature(signature_name, self._signatures)
        return await loop.run_in_executor(self._pool, self._model.predict, inputs)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._model.unload)
