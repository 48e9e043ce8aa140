"""The controller's ``Loader`` with paging, and the servable that pages its version in.

``PagingLoader`` wraps the real loader (one worker per device): the controller loads every
version as without paging and gets a ``PagedServable`` back; the version is AVAILABLE from
then on, wherever its weights are, and its first request after a page-out pages it in. So the
controller, the registry, the batcher and the data plane are unchanged by paging.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelyard.lifecycle.loading import Loader, LoadRequest
from modelyard.lifecycle.paging.pager import Pager
from modelyard.lifecycle.paging.replica import PagedReplica
from modelyard.planner.paging import PagingPlan
from modelyard.servable import Servable
from modelyard.tensors import Signature


class PagedServable:
    """A ``Servable`` for a paged version: each call pins it on its device (paging it in
    first when it is not there), runs, and unpins it."""

    def __init__(self, pager: Pager, replica: PagedReplica, first: Servable) -> None:
        self._pager = pager
        self._replica = replica
        self._signature = first.signature
        self._signatures = dict(first.signatures)

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._signatures

    @property
    def replica(self) -> PagedReplica:
        return self._replica

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        servable = await self._pager.acquire(self._replica)
        try:
            return await servable.infer(inputs, signature_name)
        finally:
            self._pager.release(self._replica)

    async def close(self) -> None:
        await self._pager.remove(self._replica)


class PagingLoader:
    """Loads through ``inner`` and hands back ``PagedServable``s (a ``Loader``)."""

    def __init__(self, inner: Loader, pager: Pager, plan: PagingPlan) -> None:
        self._inner = inner
        self._pager = pager
        self._bytes = {a.key: a.bytes for a in plan.plan.assignments}

    @property
    def pager(self) -> Pager:
        return self._pager

    async def load(self, request: LoadRequest) -> Servable:
        model = request.config
        planned = self._bytes.get(request.key) or model.memory_bytes or 0
        replica = await self._pager.register(
            request,
            planned,
            declared=model.memory_bytes is not None,
            resident=model.resident,
        )
        assert replica.servable is not None
        return PagedServable(self._pager, replica, replica.servable)
