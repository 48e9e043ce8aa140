"""How one replica of a model version is loaded: the request, the ``Loader`` seam, and the
in-process loader.

``modelyard.workers.loader.WorkerLoader`` is the other ``Loader`` (one worker process per
device). A loader that can tell when a device has been emptied implements
``ReleasesDevices``; the controller calls it after every unload (the worker loader uses it to
measure what the unload freed and to recycle a worker whose framework kept its memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from modelyard.backends import get_backend
from modelyard.config.schema import ModelConfig, Platform
from modelyard.devices import DeviceTarget
from modelyard.ids import VersionKey
from modelyard.lifecycle.servable import LocalServable, Servable
from modelyard.tensors import Signature


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """Everything a loader needs to load one replica of one version on one device."""

    key: VersionKey
    version_dir: Path
    platform: Platform
    device: DeviceTarget
    declared: Signature | None
    config: ModelConfig
    device_name: str = ""
    """The plan's name for the device (``sim0``, ``gpu1``): one worker process per name, even
    when two names share a backend target (two CPU devices are both ``cpu``)."""


class Loader(Protocol):
    """Loads a model version somewhere and hands back a ``Servable`` for it."""

    async def load(self, request: LoadRequest) -> Servable: ...


ServableWrapper = Callable[[Servable, ModelConfig], Servable]
"""Wraps a loaded servable, e.g. in a dynamic batcher; identity when not configured."""


class InProcessLoader:
    """Loads models into this process: one thread pool for loads, one for inference."""

    def __init__(self, inference_threads: int = 4) -> None:
        self._load_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="load")
        self._infer_pool = ThreadPoolExecutor(
            max_workers=inference_threads, thread_name_prefix="infer"
        )

    async def load(self, request: LoadRequest) -> Servable:
        backend = get_backend(request.platform)
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(
            self._load_pool,
            backend.load,
            request.version_dir,
            str(request.device),
            request.declared,
        )
        return LocalServable(model, self._infer_pool)

    def shutdown(self) -> None:
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=True)


def declared_signature(config: ModelConfig) -> Signature | None:
    if config.inputs is None or config.outputs is None:
        return None
    return Signature(
        inputs=tuple(t.spec() for t in config.inputs),
        outputs=tuple(t.spec() for t in config.outputs),
    )


@runtime_checkable
class ReleasesDevices(Protocol):
    """A loader told when a replica on ``device`` was unloaded (after its ``close``)."""

    async def released(self, device: str) -> None: ...
