"""The dynamic batcher: a ``Servable`` that joins concurrent requests into batches for another.

Event-driven, no polling: a batch closes when it reaches ``max_batch_size`` rows, or when the
``batch_timeout_micros`` timer started by its first request has fired and the model is free to
take it (``loop.call_later``). Up to ``num_batch_threads`` batches run on the wrapped servable at
once (1 by default: a model replica computes one batch at a time, and the next one fills
meanwhile).

As in TF Serving's batch scheduler, the timeout makes a batch *due*, it does not close it: while
every slot is busy a due batch keeps taking requests until it is full or a slot frees, because
waiting for a busy model costs its requests nothing more and a fuller batch costs the model
less per row. Closing on the timer alone splits a saturated closed-loop load into a full batch
and a scrap of the few requests that arrived within the timeout, and the model then spends a
whole call on the scrap.

Rules a user can rely on:

* Only requests whose inputs have equal dtypes and equal dimensions after the first join a
  batch; requests with other trailing shapes fill their own batch (one open batch per shape).
* A request gets exactly its rows of every output, never a padding row nor another request's.
* A request of more than ``max_batch_size`` rows (or whose inputs disagree on dim 0) is not
  split: it runs alone, unpadded, as a batch of its own. It counts as one full batch against
  the queue bound.
* The queue holds at most ``max_enqueued_batches * max_batch_size`` rows waiting to run (open
  and closed batches, not the running ones); a request that would pass the bound is refused at
  once with ``ResourceExhausted`` (HTTP 503, gRPC RESOURCE_EXHAUSTED).
* One request's bad input fails that request only. When a batch fails with an error the model
  raised (INVALID_ARGUMENT, INTERNAL), its requests are retried in halves, and failing halves
  halved again, so the requests the model accepts on their own succeed and each rejected one
  gets the error of its own run; a batch of N requests costs at most 2N - 1 model calls. Any
  other failure (the worker died, out of memory, the model is unloading, outputs that are not
  row-aligned) fails every request in the batch with the same error (code and message).
* A request whose caller is cancelled (client gone, or its deadline passed in the data plane)
  leaves the queue at once; if its batch is already running the rows are computed and dropped.
* A request whose deadline (``modelyard.deadlines``) has passed when its batch is about to run
  is answered ``DeadlineExceeded`` and left out of the batch. A batch is sent to the model with
  the latest deadline of its requests (its work is wanted until then).

Async safety: every method runs on one event loop (the server's); nothing here is thread-safe,
and nothing needs a lock because no ``await`` sits between reading and updating the queue.
Ownership: the batcher owns the wrapped servable and closes it in ``close``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections import deque
from collections.abc import Mapping

import numpy as np

from modelyard import deadlines
from modelyard.batching.batch import BatchKey, batch_key, count_rows, join, padded_size, split
from modelyard.config.schema import BatchingConfig
from modelyard.errors import (
    Code,
    Internal,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
)
from modelyard.servable import Servable
from modelyard.tensors import Signature

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


class _Stage(enum.Enum):
    OPEN = "open"  # taking requests; its timer is running
    READY = "ready"  # closed (full or timed out), waiting for a free slot
    RUNNING = "running"  # handed to the wrapped servable


class _Request:
    __slots__ = ("batch", "clock", "future", "inputs", "rows")

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        future: asyncio.Future[Outputs],
        clock: deadlines.RequestClock | None = None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.batch: _Batch | None = None
        self.clock = clock  # the caller's deadline and phases (None: no deadline)


class _Batch:
    __slots__ = ("cost", "due", "key", "requests", "rows", "stage", "timer")

    def __init__(self, key: BatchKey | None) -> None:
        self.key = key  # None: a request that runs alone
        self.requests: list[_Request] = []
        self.rows = 0
        self.cost = 0  # rows it counts against the queue bound
        self.stage = _Stage.OPEN
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # its timeout has passed: it runs as soon as a slot is free


class DynamicBatcher:
    """Batches requests for ``inner`` following ``config``; see the module docstring.

    ``model`` names the model in error messages. ``inner.signature`` must give every input a
    variable first dimension (checked by ``batching_wrapper``, not here).
    """

    def __init__(self, inner: Servable, config: BatchingConfig, *, model: str) -> None:
        self._inner = inner
        self._config = config
        self._model = model
        self._order = [spec.name for spec in inner.signature.inputs]
        self._capacity = config.max_enqueued_batches * config.max_batch_size
        self._timeout_s = config.batch_timeout_micros / 1e6
        self._open: dict[BatchKey, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._queued = 0  # rows in open and ready batches
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def signature(self) -> Signature:
        return self._inner.signature

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._inner.signatures

    @property
    def queued_rows(self) -> int:
        """Rows waiting in open and ready batches (not those running)."""
        return self._queued

    async def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Outputs:
        """Queue ``inputs`` (already validated) and wait for their rows of the batch's outputs.

        A named signature (``signature_name`` not None) goes straight to the wrapped servable,
        unbatched: only the default signature is batched."""
        if signature_name is not None:
            return await self._inner.infer(inputs, signature_name)
        if self._closed:
            raise Unavailable(f"model {self._model!r} is unloading")
        loop = asyncio.get_running_loop()
        rows = count_rows(inputs)
        size = self._config.max_batch_size
        alone = rows is None or rows > size
        cost = size if alone else rows or 0
        if self._queued + cost > self._capacity:
            raise ResourceExhausted(
                f"model {self._model!r} is overloaded: its batching queue holds "
                f"{self._queued} of at most {self._capacity} rows (max_enqueued_batches "
                f"{self._config.max_enqueued_batches} x max_batch_size {size}) and this "
                f"request adds {cost}; retry later, or raise batching.max_enqueued_batches "
                "or add replicas"
            )
        request = _Request(inputs, rows or 0, loop.create_future(), deadlines.current())
        if request.clock is not None:
            request.clock.enter(deadlines.Phase.BATCH_QUEUE)
        if alone:
            batch = _Batch(None)
            self._add(batch, request, cost)
            self._close_batch(batch)
        else:
            self._enqueue(loop, request, batch_key(inputs, self._order))
        self._dispatch(loop)
        try:
            return await request.future
        except asyncio.CancelledError:
            self._forget(request)
            raise

    async def close(self) -> None:
        """Refuse new requests, fail the queued ones (Unavailable), let the running batches
        finish, then close the wrapped servable."""
        self._closed = True
        waiting = [*self._open.values(), *self._ready]
        self._open.clear()
        self._ready.clear()
        self._queued = 0
        for batch in waiting:
            if batch.timer is not None:
                batch.timer.cancel()
            for request in batch.requests:
                if not request.future.done():
                    request.future.set_exception(
                        Unavailable(f"model {self._model!r} unloaded before this request ran")
                    )
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self._inner.close()

    # -- the queue ------------------------------------------------------------------------

    def _enqueue(self, loop: asyncio.AbstractEventLoop, request: _Request, key: BatchKey) -> None:
        batch = self._open.get(key)
        if batch is not None and batch.rows + request.rows > self._config.max_batch_size:
            self._close_batch(batch)
            batch = None
        if batch is None:
            batch = _Batch(key)
            self._open[key] = batch
            batch.timer = loop.call_later(self._timeout_s, self._on_timeout, batch, loop)
        self._add(batch, request, request.rows)
        if batch.rows >= self._config.max_batch_size:
            self._close_batch(batch)

    def _add(self, batch: _Batch, request: _Request, cost: int) -> None:
        request.batch = batch
        batch.requests.append(request)
        batch.rows += request.rows
        batch.cost += cost
        self._queued += cost

    def _close_batch(self, batch: _Batch) -> None:
        """OPEN -> READY: no more requests join it; it runs when a slot is free."""
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if batch.key is not None and self._open.get(batch.key) is batch:
            del self._open[batch.key]
        batch.stage = _Stage.READY
        self._ready.append(batch)

    def _on_timeout(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> None:
        batch.timer = None
        if batch.stage is _Stage.OPEN:
            batch.due = True
            self._dispatch(loop)

    def _next_batch(self) -> _Batch | None:
        """The batch to run in a free slot: a closed one first (in the order they closed), else
        the oldest open batch whose timeout has passed (closed now)."""
        if self._ready:
            return self._ready.popleft()
        for batch in self._open.values():  # insertion order: oldest first
            if batch.due:
                self._close_batch(batch)
                return self._ready.popleft()
        return None

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start batches while fewer than ``num_batch_threads`` run."""
        while len(self._running) < self._config.num_batch_threads:
            batch = self._next_batch()
            if batch is None:
                return
            self._queued -= batch.cost
            _drop_expired(batch)
            if not batch.requests:  # every request in it was cancelled or expired
                continue
            batch.stage = _Stage.RUNNING
            clocks = [r.clock for r in batch.requests if r.clock is not None]
            run = deadlines.BatchRun(batch.rows)  # statistics count this execution once
            for clock in clocks:
                clock.enter(deadlines.Phase.DEVICE)
                clock.batch = run
            # The batch's task runs under a clock of its own: the latest deadline of its
            # requests (none if one has none), which the worker client sends with the batch.
            shared = None
            if len(clocks) == len(batch.requests):
                shared = deadlines.RequestClock(deadlines.latest(clocks), model=self._model)
                shared.batch = run  # the worker's compute times land on the batch's run
            task = loop.create_task(self._run(batch), context=deadlines.context_with(shared))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._closed:
            self._dispatch(asyncio.get_running_loop())

    def _forget(self, request: _Request) -> None:
        """A cancelled caller: take its rows out of a batch that has not started."""
        batch = request.batch
        if batch is None or batch.stage is _Stage.RUNNING or request not in batch.requests:
            return
        batch.requests.remove(request)
        cost = batch.cost if batch.key is None else request.rows
        batch.rows -= request.rows
        batch.cost -= cost
        self._queued -= cost
        if not batch.requests and batch.stage is _Stage.OPEN:
            if batch.timer is not None:
                batch.timer.cancel()
            if batch.key is not None and self._open.get(batch.key) is batch:
                del self._open[batch.key]

    # -- running a batch ------------------------------------------------------------------

    async def _run(self, batch: _Batch) -> None:
        requests = batch.requests
        try:
            result = await self._execute(requests, alone=batch.key is None)
            waiting = _waiting(requests)
            if isinstance(result, _Failure) and result.from_model and len(waiting) > 1:
                # The slot stays taken while the halves run: they are this batch's work.
                await self._bisect(waiting)
                self._release_slot()
                return
            self._release_slot()
            _answer(requests, result)
        except asyncio.CancelledError:
            # The loop is shutting down under us: nobody may wait forever on this batch.
            for request in requests:
                request.future.cancel()
            raise

    async def _execute(self, requests: list[_Request], *, alone: bool) -> list[Outputs] | _Failure:
        """One call of the wrapped servable on ``requests`` joined: each request's rows of the
        outputs, or the failure all of them share. ``alone``: the single request's own inputs
        and outputs, untouched (not padded, not split)."""
        try:
            if alone:
                return [await self._inner.infer(requests[0].inputs)]
            size = padded_size(sum(r.rows for r in requests), self._config.allowed_batch_sizes)
            inputs = join([r.inputs for r in requests], self._order, size)
            outputs = await self._inner.infer(inputs)
        except ModelyardError as exc:
            return _Failure(exc, from_model=exc.code in _SPLIT_ON)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("a batch of model %r failed", self._model)
            return _Failure(Internal(f"internal error: {type(exc).__name__}: {exc}"), True)
        try:
            return split(outputs, [r.rows for r in requests], size)
        except ModelyardError as exc:  # the model broke the batching contract: no retry helps
            return _Failure(exc, from_model=False)

    async def _bisect(self, requests: list[_Request]) -> None:
        """Run each half of ``requests`` (which failed together) as a batch of its own, and
        halve again whichever half fails with an error from the model, so that only the
        requests the model rejects on their own fail, each with its own error.

        A batch of N requests costs at most 2N - 1 calls in all (the calls form a binary tree
        with N leaves); one bad request among N costs about 2 log2(N). Requests whose caller
        has gone meanwhile are dropped from the halves, not computed.
        """
        middle = len(requests) // 2
        for half in (requests[:middle], requests[middle:]):
            half = _waiting(half)
            if not half:
                continue
            result = await self._execute(half, alone=False)
            if isinstance(result, _Failure) and result.from_model and len(half) > 1:
                await self._bisect(half)
            else:
                _answer(half, result)

    def _release_slot(self) -> None:
        """The running batch's compute is over: start the next ready batch now, before this
        one's requests are answered, so the model computes while their responses are encoded
        and written instead of waiting for the event loop to get through them first."""
        task = asyncio.current_task()
        if task is not None:
            self._running.discard(task)
        if not self._closed:
            self._dispatch(asyncio.get_running_loop())


_SPLIT_ON = frozenset({Code.INVALID_ARGUMENT, Code.INTERNAL})
"""Failures of a batch that one request's inputs may have caused (a value out of range that only
the model can see, a guard on a dynamic dimension, an unforeseen backend error): its requests are
retried apart. Not UNAVAILABLE (the worker died or the model is unloading: the supervisor's
business, and retrying would only pile more work on a restart), RESOURCE_EXHAUSTED, NOT_FOUND or
a deadline: those are about the server, not about one request."""


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A batch's failure; ``from_model``: the model raised it, so a request may be the cause."""

    error: ModelyardError
    from_model: bool


def _waiting(requests: list[_Request]) -> list[_Request]:
    """The requests whose caller still waits (not cancelled, not answered)."""
    return [r for r in requests if not r.future.done()]


def _answer(requests: list[_Request], result: list[Outputs] | _Failure) -> None:
    if isinstance(result, _Failure):
        for request in requests:
            # One exception object per request: raising a shared one from many tasks would
            # chain their tracebacks into each other.
            if not request.future.done():
                request.future.set_exception(ModelyardError.from_wire(*result.error.to_wire()))
        return
    for request, part in zip(requests, result, strict=True):
        if not request.future.done():
            request.future.set_result(part)


def _drop_expired(batch: _Batch) -> None:
    """Answer DeadlineExceeded to the requests of ``batch`` whose deadline has passed, and take
    them out of it: nobody waits for their rows any more. ``batch`` is not running yet."""
    kept = []
    for request in batch.requests:
        if request.clock is not None and request.clock.expired():
            if not request.future.done():
                request.future.set_exception(request.clock.exceeded())
        else:
            kept.append(request)
    if len(kept) != len(batch.requests):
        batch.requests = kept
        batch.rows = sum(r.rows for r in kept)
