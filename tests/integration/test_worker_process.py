"""A request to a worker whose connection has just closed fails as the worker's death (503), on
the server's own event loop (uvloop): never as an internal error from writing to a closed socket.

The CI run that found this: during a kill -9 of a worker under load, a write to the dead peer
closed the transport (EPIPE) and, in the same loop turn, before the read loop saw the end, an
HTTP handler's request wrote to it; uvloop raises RuntimeError there, which answered 500."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np

from modelyard.devices import DeviceTarget
from modelyard.server.eventloop import run
from modelyard.testing.models import write_onnx_sum_product
from modelyard.workers.client import WorkerDied, WorkerProcess
from modelyard.workers.messages import Load, Loaded, Outputs, Report, new_infer


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


def test_replies_read_right_after_the_write_or_by_the_loop_all_come_back_whole_and_in_order(
    tmp_path: Path,
) -> None:
    """One request in flight: its reply is read right after the write (``_read_now``) when the
    worker has answered already; a reply larger than that read (about 1 MB here) is finished
    by the event loop's reads; several in flight are read by the loop alone. Every answer is
    the model's own, for each size, in every mix."""
    built = write_onnx_sum_product(tmp_path / "m" / "1")
    rng = np.random.default_rng(7)

    async def call(worker: WorkerProcess, rows: int) -> tuple[dict[str, np.ndarray], Outputs]:
        inputs = {n: rng.standard_normal((rows, 3)).astype(np.float32) for n in ("a", "b")}
        reply = await worker.request(lambda rid: new_infer(rid, "m", 1, inputs))
        assert isinstance(reply, Outputs)
        return inputs, reply

    async def scenario() -> list[tuple[dict[str, np.ndarray], Outputs]]:
        worker = WorkerProcess("sim0", DeviceTarget.cpu(), infer_threads=2)
        await worker.start()
        try:
            loaded = await worker.request(
                lambda rid: Load(rid, "m", 1, str(built.artifact.parent), "onnx", "cpu")
            )
            assert isinstance(loaded, Loaded)
            got = [await call(worker, rows) for rows in (1, 40_000, 1, 2, 40_000, 1, 3)]
            got += await asyncio.gather(*(call(worker, rows) for rows in (1, 40_000, 2, 5)))
            return got
        finally:
            await worker.stop(wait_s=5.0)

    for inputs, reply in run(scenario()):
        expected = built.reference(inputs)
        assert sorted(reply.tensors) == ["product", "sum"]
        for name, array in expected.items():
            np.testing.assert_array_equal(reply.tensors[name], array)
