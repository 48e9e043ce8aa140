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

from modelyard.backends.base import LoadedModel
from modelyard.tensors import Signature


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

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._model.unload)
