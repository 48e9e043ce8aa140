"""Who reads a worker's socket: one of two threads at a time, so a short inference can run on
the thread that read it.

Waking an execution slot for every request cost the worker more CPU than the tiny model's call
(a thread switch each way, a condition variable, the job on a thread whose caches had gone cold:
about 200 µs against a 30 µs call, issue 18). So ``WorkerHost`` runs a request on its reader
thread when nothing else runs or waits and the model's last call was short (``run_inline``).
The reader then reads nothing until the call ends, and a call that was expected to be short may
not be (``write_torchscript_loop``'s model runs as long as a request asks). The reader role is
therefore handed over: a second thread, the *watcher*, looks every ``poll_s`` while inline calls
are being made, and when it finds the same call still running on two looks in a row it takes
the reader role itself. From then on it reads (pings are answered, other models' requests go
to the execution slots); the thread of the long call becomes the watcher once its call ends.
So no frame waits more than about ``2 * poll_s`` behind an inline call, and the heartbeat's and
fairness's promises hold as with every call on a slot.

The watcher costs nothing while the worker is idle or serving only from its slots: it looks
only while inline calls are being made, and stops after ``idle_polls`` looks without one (an
inline call after that wakes it). While it looks, each look costs a thread wake-up: with
``POLL_S`` of 20 ms, 50 a second whatever the request rate.

Thread safety: ``run_inline`` is called by the thread holding the reader role; everything else
is internal. One lock guards the state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_S = 0.02
"""How often the watcher looks while inline calls are being made: a call still running on two
looks in a row (20 to 40 ms) hands the reading to the watcher. Each look wakes a thread (tens
of µs of CPU on a loaded machine), so not much more often."""
IDLE_POLLS = 10
"""Looks without a new inline call after which the watcher stops looking (0.2 s)."""


class Handover:
    """Two threads taking turns at ``read_loop``. See the module docstring.

    ``read_loop`` reads and dispatches frames until the stream ends (it returns the process's
    exit code) or until ``run_inline`` tells it that its thread lost the reader role (it must
    then return None at once, without reading again).

    The thread of a call that was handed over watches only once its call has ended; until then
    the new reader must not start another inline call (``FairSlots.start_inline`` refuses while
    the first is counted as running, so it does not).
    """

    def __init__(
        self,
        read_loop: Callable[[], int | None],
        *,
        poll_s: float = POLL_S,
        idle_polls: int = IDLE_POLLS,
    ) -> None:
        self._read_loop = read_loop
        self._poll_s = poll_s
        self._idle_polls = idle_polls
        # A plain lock (its ``with`` costs no Python call, a Condition's does): the reader
        # takes it twice per inline call.
        self._lock = threading.Lock()
        self._calls = 0  # inline calls started so far
        self._in_call = False  # an inline call is running on the reader's thread
        self._handed = False  # the watcher took the reader role during that call
        self._watching = False  # the watcher is looking (else it waits on _wake, or reads)
        self._wake = threading.Lock()  # held while nobody needs the watcher; released to wake it
        self._wake.acquire()
        self._ended = False
        self._done = threading.Lock()  # released once, when the stream has ended
        self._done.acquire()
        self._code = 0
        self._error: BaseException | None = None

    def run(self) -> int:
        """Read until the stream ends, on two threads of its own; the exit code, as soon as
        either reads the end (the other may still be in a long call: a worker never outlives
        its server). Re-raises what ``read_loop`` raised on either thread."""
        for index in range(2):
            threading.Thread(
                target=self._thread, args=(index == 0,), name=f"reader-{index}", daemon=True
            ).start()
        self._done.acquire()
        if self._error is not None:
            raise self._error
        return self._code

    def run_inline(self, call: Callable[[], None]) -> bool:
        """Run ``call`` on this (the reader's) thread; True when this thread still holds the
        reader role afterwards, False when the watcher took it meanwhile."""
        with self._lock:
            self._calls += 1
            self._in_call = True
            if not self._watching:
                self._wake_watcher()
        try:
            call()
        finally:
            with self._lock:
                self._in_call = False
                handed, self._handed = self._handed, False
        return not handed

    # -- the two threads ---------------------------------------------------------------

    def _thread(self, reading: bool) -> None:
        try:
            self._turns(reading=reading)
        except BaseException as exc:  # re-raised by run()
            with self._lock:
                if self._error is None and not self._ended:
                    self._error = exc
            self._end(1)

    def _turns(self, *, reading: bool) -> int:
        """Read or watch, in turns, until the end; the exit code."""
        while True:
            if reading:
                code = self._read_loop()
                if code is not None:
                    self._end(code)
                    return code
            if not self._watch():
                return self._code
            reading = True

    def _end(self, code: int) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended, self._code = True, code
            if not self._watching:
                self._wake_watcher()
        self._done.release()

    def _wake_watcher(self) -> None:
        """Called with ``_lock`` held, while the watcher is not looking: make it look. Only
        this releases ``_wake``, and only the watcher acquires it, after saying it is not
        looking, so it is released once per wait."""
        self._watching = True
        self._wake.release()

    def _watch(self) -> bool:
        """Watch the reader's inline calls; True when this thread has taken the reader role,
        False once the stream has ended."""
        seen = -1  # the call found running on the last look
        with self._lock:
            last_calls = self._calls
        quiet = 0
        while True:
            with self._lock:
                if self._ended:
                    return False
                if self._in_call and self._calls == seen:
                    self._handed = True
                    return True  # _watching stays True: nobody wakes a thread that reads
                seen = self._calls if self._in_call else -1
                if self._calls != last_calls or self._in_call:
                    last_calls, quiet = self._calls, 0
                else:
                    quiet += 1
                idle = quiet >= self._idle_polls
                if idle:
                    self._watching = False
            if idle:
                self._wake.acquire()  # until an inline call starts, or the end
                quiet = 0
            else:
                time.sleep(self._poll_s)
