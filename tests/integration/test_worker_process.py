"""A request to a worker whose connection has just closed fails as the worker's death (503), on
the server's own event loop (uvloop): never as an internal error from writing to a closed socket.

The CI run that found this: during a kill -9 of a worker under load, a write to the dead peer
closed the transport (EPIPE) and, in the same loop turn, before the read loop saw the end, an
HTTP handler's request wrote to it; uvloop raises RuntimeError there, which answered 500."""

from __future__ import annotations

import asyncio
import os
import signal

from modelyard.devices import DeviceTarget
from modelyard.server.eventloop import run
from modelyard.workers.client import WorkerDied, WorkerProcess
from modelyard.workers.protocol import Report


async def _failure(worker: WorkerProcess) -> BaseException | None:
    """What one Report request to ``worker`` raised; None when it was answered."""
    try:
        await worker.request(lambda rid: Report(rid))
    except BaseException as exc:
        return exc
    return None


def test_a_request_after_the_connection_closed_fails_as_worker_died() -> None:
    async def scenario() -> tuple[BaseException | None, BaseException | None, BaseException | None]:
        worker = WorkerProcess("sim0", DeviceTarget.cpu(), infer_threads=1)
        await worker.start()
        try:
            alive = await _failure(worker)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            # The state of that loop turn, reached directly: the transport closed (its handle
            # is gone one loop turn after the close), and the read loop has not run since, so
            # the worker is not yet known to be dead.
            worker._writer.transport.abort()  # type: ignore[union-attr]
            await asyncio.sleep(0)
            during = await _failure(worker)
            await worker.wait_closed()
            return alive, during, await _failure(worker)
        finally:
            await worker.stop(wait_s=2.0)

    alive, during, after = run(scenario())
    assert alive is None
    assert isinstance(during, WorkerDied), repr(during)  # an Unavailable: 503 / UNAVAILABLE
    assert isinstance(after, WorkerDied), repr(after)
    assert "SIGKILL" in str(after)
