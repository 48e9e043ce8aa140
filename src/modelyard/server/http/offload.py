"""Decoding large request bodies (and encoding large answers) away from the event loop.

One event loop serves every request of the front end, so a request body that takes long to
decode stalls every other request meanwhile: a 28 MB TF Serving REST body took 0.6 s to decode
(objects per instance: 1.3 s; measured on a loaded 2-core box), and every other request on the
server waited that long.

A thread does not help: ``orjson.loads``, simdjson's parse and numpy's conversion of nested
lists each hold the GIL for the whole call (in a thread, the loop still stalled 378 ms on that
body's ``orjson.loads``, 290 ms on its ``np.asarray``). So bodies over ``OFF_LOOP_BYTES`` are
decoded in a helper process; smaller ones inline, where decoding costs less than the hop
(about 1 ms per 100 kB of JSON against about 1 ms for the round trip of a small body).

Large JSON answers are encoded there too, for the same reason (a 350,000 x 2 float answer:
140 ms of ``orjson.dumps`` as TF Serving's row format, 50 ms as KServe's), when their numbers
hold more than ``OFF_LOOP_BYTES / JSON_EXPANSION`` bytes.

The helpers: ``HELPERS`` processes (``python -m modelyard.server.http.offload``), each driven by
one thread of a small pool that does the blocking pipe I/O (the GIL is released while it
waits), shared by every server in this process and started on the first large body (a few
hundred ms, once). A helper runs no model code, only the pure decode and encode functions of the
REST adapters; it runs at a lower CPU priority (``HELPER_NICE``) so that on a busy machine
small requests get the CPU first, and with a worker's environment (an allowlist: never the
management token). It is
a plain subprocess, not ``multiprocessing``: that would import the embedding program's main
module again in the child. It exits when its pipe closes (this process exited).

What a helper answers is read with an unpickler that builds only numpy arrays and the decoders'
own value types (``ANSWER_TYPES``), never an arbitrary class or callable: a client that took a
helper over through a parser bug could not run code in the front end with its answer. Errors
cross the process boundary as ``(code, message)``, never pickled exceptions. If a helper
dies (killed, out of memory) a new one starts and takes the request over, once; a request that
sees two helpers die gets Unavailable.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar

from modelyard.devices import DeviceTarget
from modelyard.errors import Internal, ModelyardError, Unavailable
from modelyard.server import heap
from modelyard.workers.environment import worker_environment

log = logging.getLogger(__name__)

T = TypeVar("T")

OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are decoded in a helper. At this size the general JSON path costs
about 3-6 ms on the loop (measured: 0.8 MB took 11-19 ms), the hop about 1 ms."""

JSON_EXPANSION = 4
"""About how many bytes of JSON one byte of a numeric array becomes (a float32 is 4 bytes in
an array, 8 to 12 characters in JSON): answers are sized by their arrays before encoding."""

HELPERS = 1
"""Large bodies decoded at once: one keeps the front end's CPU use for them bounded (a flood of
large bodies queues here, not on the loop)."""

HELPER_ATTEMPTS = 2
"""Helpers a request may go through: a helper that died idle costs its next request nothing;
a body that kills the helper costs two helpers, then gets Unavailable."""

HELPER_NICE = 5
"""Added to a helper's nice value: large bodies yield the CPU to small requests."""

ANSWER_TYPES = frozenset(
    {
        ("modelyard.server.http.kserve_codec", "InferRequest"),
        ("modelyard.server.http.kserve_codec", "RequestedOutput"),
        ("modelyard.server.http.tfserving", "PredictBody"),
        ("modelyard.tensors", "DataType"),
        ("modelyard.tensors", "Signature"),
        ("modelyard.tensors", "SignatureMethod"),
        ("modelyard.tensors", "TensorSpec"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
        *((f"numpy.{core}.multiarray", "scalar") for core in ("core", "_core")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    }
)
"""The only globals a helper's answer may name: what the decoders return, and numpy's
reconstructors of arrays and scalars (numpy 1 and 2 spell their module differently)."""

_FRAME = struct.Struct(">Q")  # every message: its length, then a pickle


def load_answer(data: bytes) -> Any:
    """A helper's pickled answer; UnpicklingError when it names anything not in
    ``ANSWER_TYPES``."""
    return _AnswerUnpickler(io.BytesIO(data)).load()


class _AnswerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ANSWER_TYPES:
            raise pickle.UnpicklingError(f"a helper's answer names {module}.{name}")
        return super().find_class(module, name)


async def run(size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``: inline when ``size`` (the JSON's bytes) is at most
    ``OFF_LOOP_BYTES``, else in a helper process, without blocking the event loop.

    ``function`` must be a module-level function and ``args`` and its result picklable; the
    ModelyardError it raises is raised here (same code and message).
    """
    if size <= OFF_LOOP_BYTES:
        return function(*args)
    loop = asyncio.get_running_loop()
    outcome = await loop.run_in_executor(_POOL.executor(), _in_helper, function, args)
    if outcome[0] == "error":
        raise ModelyardError.from_wire(outcome[1], outcome[2])
    result: T = outcome[1]
    return result


class _Pool:
    """The threads that drive the helpers, started on first use; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(HELPERS, thread_name_prefix="modelyard-decode")
            return self._executor


_POOL = _Pool()
_local = threading.local()  # each pool thread's helper
_running: dict[int, _Helper] = {}  # by pid, for helper_pids


def helper_pids() -> list[int]:
    """The process ids of the helpers running now (none before the first large body)."""
    return sorted(pid for pid, helper in list(_running.items()) if helper.alive)


class _HelperDied(Exception):
    pass


def _in_helper(function: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Runs in a pool thread: one call in this thread's helper, retried once in a new helper
    when it dies. Returns ``("ok", result)`` or ``("error", code, message)``."""
    request = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
    for attempt in range(HELPER_ATTEMPTS):
        helper: _Helper | None = getattr(_local, "helper", None)
        if helper is None or not helper.alive:
            helper = _local.helper = _Helper()
        try:
            answer = helper.call(request)
        except _HelperDied as exc:
            log.warning("a body decoding process died (%s); attempt %d of %d", exc,
                        attempt + 1, HELPER_ATTEMPTS)  # fmt: skip
            helper.kill()
            continue
        try:
            outcome: tuple[Any, ...] = load_answer(answer)
        except Exception as exc:  # never from our decoders: the helper is not to be trusted now
            log.error("a body decoding process answered what it may not (%s); killed", exc)
            helper.kill()
            raise Internal("internal error: the body decoding process answered garbage") from None
        return outcome
    raise Unavailable(
        f"the process that decodes large request bodies died {HELPER_ATTEMPTS} times while "
        "working on this request; retry later"
    )


class _Helper:
    """One helper process and its pipes; used by one thread only."""

    def __init__(self) -> None:
        # A worker's allowlisted environment, on no GPU: never the server's secrets.
        env = worker_environment(os.environ, DeviceTarget.cpu())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C of the server's terminal is the server's
        )
        _running[self._proc.pid] = self

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def call(self, request: bytes) -> bytes:
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        try:
            _write_frame(self._proc.stdin, request)
            return _read_frame(self._proc.stdout)
        except (OSError, EOFError) as exc:
            raise _HelperDied(self._exit_status(exc)) from None

    def kill(self) -> None:
        _running.pop(self._proc.pid, None)
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()

    def _exit_status(self, exc: BaseException) -> str:
        try:
            code = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return f"{type(exc).__name__}: {exc}"
        return f"pid {self._proc.pid} exited with {code}"


def _write_frame(pipe: IO[bytes], payload: bytes) -> None:
    pipe.write(_FRAME.pack(len(payload)))
    pipe.write(payload)
    pipe.flush()


def _read_frame(pipe: IO[bytes]) -> bytes:
    header = pipe.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise EOFError("the helper closed its pipe")
    (length,) = _FRAME.unpack(header)
    payload = pipe.read(length)
    if len(payload) < length:
        raise EOFError("the helper closed its pipe mid-answer")
    return payload


# -- the helper process --------------------------------------------------------------------


def _serve() -> None:
    """The helper's loop: a call per frame on stdin, its outcome as a frame on stdout, until
    stdin closes. Anything a library prints goes to stderr, never into the answers."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    calls = sys.stdin.buffer
    os.nice(HELPER_NICE)
    heap.keep_freed_memory()  # one large body after another: reuse freed memory
    while True:
        try:
            function, args = pickle.loads(_read_frame(calls))
        except EOFError:
            return
        try:
            answer = pickle.dumps(("ok", function(*args)), protocol=pickle.HIGHEST_PROTOCOL)
        except ModelyardError as exc:
            answer = pickle.dumps(("error", *exc.to_wire()))
        except Exception as exc:  # a bug in a decoder or encoder: the inline path's 500
            log.exception("%s failed in the decoding process", getattr(function, "__name__", "?"))
            error = Internal(f"internal error: {type(exc).__name__}: {exc}")
            answer = pickle.dumps(("error", *error.to_wire()))
        _write_frame(answers, answer)


if __name__ == "__main__":
    _serve()
