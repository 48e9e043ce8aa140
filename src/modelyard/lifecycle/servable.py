"""``LocalServable``: a model loaded in this process, as a ``Servable``.

The protocol itself is ``modelyard.servable.Servable`` (re-exported here), in the bottom layer so
that the batcher can wrap any servable without importing the lifecycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelyard.backends.base import LoadedModel, MultiSignatureModel
from modelyard.servable import Servable as Servable
from modelyard.tensors import DEFAULT_SIGNATURE, Signature, unknown_signature


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
