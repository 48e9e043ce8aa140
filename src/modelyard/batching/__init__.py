"""Dynamic batching: many concurrent requests to one model replica run as one batch.

``batching_wrapper`` is the controller's ``ServableWrapper``: it wraps each loaded replica of a
model that has ``batching:`` in its config in a ``DynamicBatcher`` and leaves the others as
they are. See ``modelyard.batching.batcher`` for the rules a client can rely on.
"""

from __future__ import annotations

import asyncio

from modelyard.batching.batcher import DynamicBatcher
from modelyard.config.schema import ModelConfig
from modelyard.errors import InvalidArgument
from modelyard.servable import Servable

__all__ = ["DynamicBatcher", "batching_wrapper"]

_closing: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly; keep them to the end


def batching_wrapper(servable: Servable, model: ModelConfig) -> Servable:
    """``servable`` in a batcher when ``model.batching`` is set, else ``servable`` itself.

    Raises InvalidArgument (the version is then FAILED, with this message) when an input has no
    variable first dimension to batch along; the replica is closed first, since the caller
    never gets a handle on it. Must be called on the event loop that serves the model.
    """
    if model.batching is None:
        return servable
    fixed = [s for s in servable.signature.inputs if not s.shape or s.shape[0] != -1]
    if fixed:
        task = asyncio.get_running_loop().create_task(servable.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        names = ", ".join(s.describe() for s in fixed)
        raise InvalidArgument(
            f"model {model.name!r} has batching configured, but input {names} has no variable "
            "first (batch) dimension to batch along; remove `batching:` or export the model "
            "with a dynamic batch dimension"
        )
    return DynamicBatcher(servable, model.batching, model=model.name)
