"""Decoding large request bodies (and encoding large answers) away from the event loop.

One event loop serves every request of the front end, so a request body that takes long to
decode stalls every other request meanwhile: a 28 MB TF Serving REST body took 0.6 s to decode
(objects per instance: 1.3 s; measured on a loaded 2-core box), and every other request on the
server waited that long.

A thread does not help: ``orjson.loads``, simdjson's parse and numpy's conversion of nested
lists each hold the GIL for the whole call (in a thread, the loop still stalled 378 ms on that
body's ``orjson.loads``, 290 ms on its ``np.asarray``). So bodies over ``OFF_LOOP_BYTES`` are
decoded in a separate process; smaller ones inline, where decoding costs less than the hop
(about 1 ms per 100 kB of JSON against about 1 ms for the round trip of a small body).

Large JSON answers are encoded there too, for the same reason (a 350,000 x 2 float answer:
140 ms of ``orjson.dumps`` as TF Serving's row format, 50 ms as KServe's), when their numbers
hold more than ``OFF_LOOP_BYTES / JSON_EXPANSION`` bytes.

The helper process is the front end's own, shared by every server in this process, started on
the first large body (a few hundred ms, once) and stopped at interpreter exit; it runs no model
code, only the pure decode functions of the REST adapters. ``DECODE_PROCESSES`` of them decode
at once; further large bodies wait their turn, small requests never do.

Errors cross the process boundary as ``(code, message)``, never pickled exceptions. If the
helper dies (killed, out of memory) a new one starts and takes the request over, once; a request
that sees two helpers die gets Unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from modelyard.errors import Internal, ModelyardError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are decoded in the helper process. At this size the general JSON
path costs about 3-6 ms on the loop (measured: 0.8 MB took 11-19 ms), the hop about 1 ms."""

JSON_EXPANSION = 4
"""About how many bytes of JSON one byte of a numeric array becomes (a float32 is 4 bytes in
an array, 8 to 12 characters in JSON): answers are sized by their arrays before encoding."""

HELPER_ATTEMPTS = 2
"""Helpers a request may go through: a helper that died idle costs its next request nothing;
a body that kills the helper costs two helpers, then gets Unavailable."""

DECODE_PROCESSES = 1
"""Large bodies decoded at once: one keeps the front end's CPU use for them bounded (a flood of
large bodies queues here, not on the loop)."""


class _Decoder:
    """The lazily started process pool; safe to use from any thread and event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, never fork: the front end runs threads and an event loop.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    DECODE_PROCESSES, mp_context=context, initializer=_ignore_interrupts
                )
            return self._pool

    def discard(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                self._pool = None
        broken.shutdown(wait=False, cancel_futures=True)


_DECODER = _Decoder()


async def run(size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``: inline when ``size`` (the JSON's bytes) is at most
    ``OFF_LOOP_BYTES``, else in the helper process, without blocking the event loop.

    ``function`` must be a module-level function and ``args`` and its result picklable; the
    ModelyardError it raises is raised here (same code and message).
    """
    if size <= OFF_LOOP_BYTES:
        return function(*args)
    for attempt in range(HELPER_ATTEMPTS):
        pool = _DECODER.pool()
        try:
            outcome = await asyncio.wrap_future(pool.submit(_call, function, args))
            break
        except BrokenProcessPool:
            # It died, maybe between requests (killed, out of memory elsewhere), maybe on this
            # body: a new helper tries once more, then the request gives up.
            _DECODER.discard(pool)
            log.warning(
                "the body decoding process died; attempt %d of %d", attempt + 1, HELPER_ATTEMPTS
            )
    else:
        raise Unavailable(
            f"the process that decodes large request bodies died {HELPER_ATTEMPTS} times "
            "while working on this request; retry later"
        )
    if isinstance(outcome, _Failed):
        raise ModelyardError.from_wire(outcome.code, outcome.message)
    result: T = outcome
    return result


@dataclass(frozen=True, slots=True)
class _Failed:
    """A decode's error, as it crosses back: code and message only."""

    code: str
    message: str


def _ignore_interrupts() -> None:
    """Runs first in the helper: Ctrl-C reaches the whole process group, and the server, not
    the helper, decides when the helper stops (it is shut down at interpreter exit)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call(function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Runs in the helper process."""
    try:
        return function(*args)
    except ModelyardError as exc:
        return _Failed(*exc.to_wire())
    except (
        Exception
    ) as exc:  # a bug in a decoder or encoder: the same 500 the inline path would give
        log.exception("%s failed in the decoding process", getattr(function, "__name__", function))
        return _Failed(*Internal(f"internal error: {type(exc).__name__}: {exc}").to_wire())
