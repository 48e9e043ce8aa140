"""What the data plane calls to run a model: an async ``Servable``, wherever the model lives.

A ``Servable`` may be a model loaded in this process (``LocalServable``, which runs the blocking
``predict`` on a thread pool), a proxy to a model in a per-device worker process, or a batcher
wrapped around either. The data plane does not know which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from modelyard.backends.base import LoadedModel, MultiSignatureModel
from modelyard.errors import InvalidArgument
from modelyard.tensors import DEFAULT_SIGNATURE, Signature


class Servable(Protocol):
    """An async handle on one loaded replica of one model version.

    ``infer`` receives inputs already validated against ``signature`` and returns every output
    of the signature. ``close`` releases the model; ``infer`` is not called after it.
    """

    @property
    def signature(self) -> Signature: ...

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    async def close(self) -> None: ...


class LocalServable:
    """A ``LoadedModel`` in this process; ``predict`` runs on the shared inference thread pool."""

    def __init__(self, model: LoadedModel, pool: ThreadPoolExecutor) -> None:
        self._model = model
        self._pool = pool
        self._signature = model.signature

    @property
    def signature(self) -> Signature:
        return self._signature

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._model.predict, inputs)

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """Every named signature (see ``signatures_of``)."""
        if isinstance(self._model, MultiSignatureModel):
            return self._model.signatures
        return {DEFAULT_SIGNATURE: self._signature}

    async def infer_signature(
        self, inputs: Mapping[str, np.ndarray], signature_name: str
    ) -> dict[str, np.ndarray]:
        """``infer`` on the named signature; InvalidArgument for a name the model lacks."""
        model = self._model
        loop = asyncio.get_running_loop()
        if isinstance(model, MultiSignatureModel):
            return await loop.run_in_executor(
                self._pool, model.predict_signature, inputs, signature_name
            )
        if signature_name != DEFAULT_SIGNATURE:
            raise InvalidArgument(
                f"serving signature {signature_name!r} not found; this model has "
                f"{DEFAULT_SIGNATURE!r}"
            )
        return await self.infer(inputs)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._model.unload)


def signatures_of(servable: Servable) -> Mapping[str, Signature]:
    """Every named signature of ``servable``; ``{"serving_default": signature}`` for one that
    does not list them (a servable with named signatures has ``signatures`` and
    ``infer_signature(inputs, name)``, as ``LocalServable`` does; wrappers such as a batcher
    or a worker proxy may not forward them, and then serve the default signature only)."""
    found: Mapping[str, Signature] | None = getattr(servable, "signatures", None)
    return found if found is not None else {DEFAULT_SIGNATURE: servable.signature}
