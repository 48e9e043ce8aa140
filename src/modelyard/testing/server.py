"""Run a real modelyard ``Server`` in a background thread, on 127.0.0.1 with free ports.

Tests talk to it over real sockets with real clients; nothing is mocked. ``serving`` returns
only once the server reports ready (models loaded), and stops it cleanly on exit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelyard.config import ServerConfig, load_config
from modelyard.lifecycle.loading import Loader
from modelyard.server.eventloop import new_event_loop
from modelyard.server.options import ServerOptions
from modelyard.server.runtime import Server


class RunningServer:
    """A server running on its own event loop in a daemon thread."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    @property
    def rest_url(self) -> str:
        return self.server.rest_url

    @property
    def grpc_target(self) -> str:
        return self.server.grpc_target

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect or change its state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextmanager
def serving(
    config: ServerConfig | Path,
    *,
    start_timeout: float = 120.0,
    loader: Loader | None = None,
    **options: Any,
) -> Iterator[RunningServer]:
    """Start ``Server.from_config(config, ServerOptions(**options), loader=loader)``, as
    ``modelyard serve`` does, on 127.0.0.1 with free ports unless ``options`` say otherwise
    (``options``: ``ServerOptions``' fields)."""
    if isinstance(config, Path):
        config = load_config(config)
    options.setdefault("host", "127.0.0.1")
    options.setdefault("rest_port", 0)
    options.setdefault("grpc_port", 0)
    loop = new_event_loop()  # the loop `modelyard serve` runs on (uvloop where installed)
    thread = threading.Thread(target=loop.run_forever, name="modelyard-test-server", daemon=True)
    thread.start()
    server = Server.from_config(config, ServerOptions(**options), loader=loader)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(start_timeout)
        yield RunningServer(server, loop)
    finally:
        try:
            asyncio.run_coroutine_threadsafe(server.stop(grace_seconds=5), loop).result(60)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def wait_for(what: str, check: Callable[[], bool], within_s: float = 20.0) -> None:
    """Return once ``check()`` is true, polling every 50 ms; AssertionError naming ``what`` when
    it is not within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        time.sleep(0.05)
