"""The event loop the server runs on: uvloop where it is installed, asyncio's own elsewhere.

uvicorn[standard] brings uvloop on Linux and macOS. Its transports and selector are written in
C over libuv, so the per-request cost of the event loop (readiness bookkeeping, flow control,
socket reads and writes) drops to a fraction of the pure-Python selector loop's; on Windows,
where uvloop does not exist, the server runs on asyncio's default loop unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop: uvloop's when importable, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on ``new_event_loop()``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
