"""Request deadlines: by when a request must be answered, and where its time went.

A ``Deadline`` is fixed when a request arrives: ``--request-timeout-ms`` from now (modelyard's
default for every protocol), TF Serving's ``--rest_api_timeout_in_ms`` for REST when given, or
the client's gRPC deadline when it is sooner than the server's (``DeadlinePolicy``). The data
plane bounds the whole request by it: past it the client gets ``DeadlineExceeded`` (HTTP 504,
gRPC DEADLINE_EXCEEDED) and the work is dropped where it has not started (the batcher's queue,
the worker's queue).

A ``RequestClock`` follows one request through its phases (``Phase``) so that the error can say
where the time went. The clock of the request being served travels in a context variable: the
data plane sets it (``serving``) and the layers under it read it (``current``): the batcher, to
drop expired work and give a batch the latest deadline of its requests; the worker client, to
send the time left with the request. Passing it that way keeps every ``Servable.infer``
signature as it is. asyncio copies the context into each task, so each request sees its own.

Times are ``time.monotonic()`` seconds. Across processes only the milliseconds left travel
(``remaining_ms``), never a clock reading, so two processes need not share a clock.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from modelyard.errors import DeadlineExceeded
from modelyard.ids import VersionKey


class Phase(enum.Enum):
    """Where a request spends its time, in the order it passes them."""

    ADMITTED = "admitted"  # read, decoded and checked by the front end
    BATCH_QUEUE = "batch_queue"  # waiting in a model's batcher for its batch to run
    DEVICE = "device"  # sent to the device's worker: queued for a slot there, or running


@dataclass(frozen=True, slots=True)
class Deadline:
    """An instant (``time.monotonic()``) a request must be answered by; ``budget_ms`` is the
    whole allowance it was given and ``source`` names who set it (shown in the error)."""

    at: float
    budget_ms: float
    source: str

    @staticmethod
    def after_ms(budget_ms: float, source: str, start: float | None = None) -> Deadline:
        begun = time.monotonic() if start is None else start
        return Deadline(begun + budget_ms / 1000.0, budget_ms, source)

    def remaining_s(self, now: float | None = None) -> float:
        return self.at - (time.monotonic() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining_s(now) <= 0.0


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    """The server's deadlines. ``request_timeout_ms``: every protocol (0: none);
    ``rest_timeout_ms``: REST only, when TF Serving's flag was given (None: not given; 0: none).
    """

    request_timeout_ms: int = 0
    rest_timeout_ms: int | None = None

    def default(self, start: float | None = None) -> Deadline | None:
        """The deadline of a request that names none of its own (started at ``start``)."""
        if self.request_timeout_ms <= 0:
            return None
        return Deadline.after_ms(self.request_timeout_ms, "--request-timeout-ms", start)

    def rest(self, start: float | None = None) -> Deadline | None:
        """A REST request's deadline: TF Serving's flag when given, else the default."""
        if self.rest_timeout_ms is None:
            return self.default(start)
        if self.rest_timeout_ms <= 0:
            return None
        return Deadline.after_ms(self.rest_timeout_ms, "--rest_api_timeout_in_ms", start)

    def grpc(self, client_remaining_s: float | None, start: float | None = None) -> Deadline | None:
        """A gRPC request's deadline: the client's (``time_remaining()``), capped by the
        server's default."""
        server = self.default(start)
        if client_remaining_s is None:
            return server
        begun = time.monotonic() if start is None else start
        client = Deadline(
            begun + client_remaining_s, client_remaining_s * 1000.0, "the client's gRPC deadline"
        )
        return client if server is None or client.at < server.at else server


class BatchRun:
    """One execution of a batch, shared by the clocks of the requests in it, so that statistics
    count the execution once however many requests it served. Mutable; one event loop."""

    __slots__ = ("compute_ns", "counted", "rows")

    def __init__(self, rows: int) -> None:
        self.rows = rows  # the rows the batch ran with, before padding
        self.counted = False  # set by the first of its requests that statistics count
        self.compute_ns: Sequence[int] = ()  # the worker's (input, infer, output) ns, if told


class RequestClock:
    """One request's deadline and the phases it went through. Mutable; owned by the request
    (the data plane creates it, the batcher moves it to the next phase); one event loop.

    ``batch``: the batch the request ran in, when a batcher ran it (statistics read it).
    ``compute_ns``: Triton's (compute_input, compute_infer, compute_output) ns the worker
    measured for the request (``note_compute``; for a batch, on its ``BatchRun``).

    The phases live in slots while they are the common ones, without a list per request:
    ``start`` is when the request was ADMITTED, ``device_at`` when it last entered DEVICE (None
    before), and ``_phases`` stays None as long as those are all it entered (admitted, then
    straight to the device, as an unbatched request goes). Entering any other phase, or DEVICE
    a second time, makes ``_phases`` the full list of (phase, time) marks, kept up to date from
    then on; ``marks`` returns the marks either way. Statistics read the slots directly
    (``modelyard.metrics.fold``): no list and no tuple per request, on and off alike.

    Statistics' note of a success (``modelyard.metrics.stats``), set when the request is
    counted and unset before: ``key`` the version it ran on, ``rows`` its rows (dim 0) and
    ``end`` the ``time.monotonic()`` it ended at (the protocol it is counted under is the list
    it is noted in: ``StatsBook.pending``). The clock itself is the note (no tuple per
    request); never set, these cost nothing (``--no-metrics``)."""

    __slots__ = (
        "_batch",
        "_phases",
        "compute_ns",
        "deadline",
        "device",
        "device_at",
        "end",
        "key",
        "model",
        "rows",
        "start",
    )

    key: VersionKey
    rows: int
    end: float

    def __init__(self, deadline: Deadline | None, *, model: str = "", start: float | None = None):
        self.deadline = deadline
        self.model = model
        self.device = ""
        self._batch: BatchRun | None = None
        self.compute_ns: Sequence[int] = ()  # the worker's (input, infer, output) ns, if told
        self.start = time.monotonic() if start is None else start
        self.device_at: float | None = None
        self._phases: list[tuple[Phase, float]] | None = None

    def note_compute(self, compute_ns: Sequence[int]) -> None:
        """The worker's times for the execution this clock ran: on its batch if it has one
        (every request of the batch shares them), else on itself. Anything but three times
        (input, infer, output) is not the worker's and is left out."""
        if len(compute_ns) != 3:
            return
        if self._batch is not None:
            self._batch.compute_ns = compute_ns
        else:
            self.compute_ns = compute_ns

    def enter(self, phase: Phase, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        phases = self._phases
        if phases is None:
            if phase is Phase.DEVICE and self.device_at is None:  # the common case: slots only
                self.device_at = at
                return
            phases = self._phases = self.marks
        phases.append((phase, at))
        if phase is Phase.DEVICE:
            self.device_at = at

    @property
    def batch(self) -> BatchRun | None:
        """The batch the request ran in (None: unbatched). A clock with a batch keeps its
        marks as a list (``_phases`` not None), so statistics tell an unbatched request that
        went straight to the device by ``_phases`` alone."""
        return self._batch

    @batch.setter
    def batch(self, run: BatchRun | None) -> None:
        if run is not None and self._phases is None:
            self._phases = self.marks
        self._batch = run

    @property
    def phase(self) -> Phase:
        if self._phases is not None:
            return self._phases[-1][0]
        return Phase.ADMITTED if self.device_at is None else Phase.DEVICE

    @property
    def marks(self) -> list[tuple[Phase, float]]:
        """Each phase entered and when (``time.monotonic()``), in order; the first is ADMITTED
        at the request's start. Read-only for callers (statistics and traces read it)."""
        if self._phases is not None:
            return self._phases
        if self.device_at is None:
            return [(Phase.ADMITTED, self.start)]
        return [(Phase.ADMITTED, self.start), (Phase.DEVICE, self.device_at)]

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and self.deadline.expired(now)

    def remaining_ms(self, now: float | None = None) -> float | None:
        """Milliseconds left (never below 0), None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline.remaining_s(now) * 1000.0)

    def spent(self, now: float | None = None) -> dict[Phase, float]:
        """Seconds spent in each phase so far (only the phases it entered)."""
        end = time.monotonic() if now is None else now
        totals: dict[Phase, float] = {}
        marks = [*self.marks, (self.phase, end)]
        for (phase, since), (_, until) in itertools.pairwise(marks):
            totals[phase] = totals.get(phase, 0.0) + max(0.0, until - since)
        return totals

    def exceeded(self, now: float | None = None) -> DeadlineExceeded:
        """The error for this request now: the deadline, its source, and where the time went."""
        end = time.monotonic() if now is None else now
        total_ms = (end - self.start) * 1000.0
        if self.deadline is None:  # not raised without a deadline; kept total for safety
            return DeadlineExceeded(f"deadline exceeded after {total_ms:.0f} ms")
        spent = self.spent(end)
        # Phases under a millisecond are noise in a message about where the time went.
        shown = [p for p in Phase if p in spent and spent[p] >= 0.001] or [self.phase]
        parts = [f"{spent.get(p, 0.0) * 1000:.0f} ms {self._describe(p)}" for p in shown]
        return DeadlineExceeded(
            f"deadline exceeded: the request's deadline of {self.deadline.budget_ms:.0f} ms "
            f"({self.deadline.source}) passed after {total_ms:.0f} ms: " + ", ".join(parts)
        )

    def _describe(self, phase: Phase) -> str:
        model = f" of model {self.model!r}" if self.model else ""
        device = f" {self.device}" if self.device else ""
        if phase is Phase.BATCH_QUEUE:
            return f"queued in the batcher{model}"
        if phase is Phase.DEVICE:
            return f"queued or running on device{device}"
        return "reading and checking the request"


_CURRENT: contextvars.ContextVar[RequestClock | None] = contextvars.ContextVar(
    "modelyard_request_clock", default=None
)
_GIVEN: contextvars.ContextVar[tuple[Deadline | None] | None] = contextvars.ContextVar(
    "modelyard_given_deadline", default=None
)


@contextlib.contextmanager
def given(deadline: Deadline | None) -> Iterator[None]:
    """Inside the block, requests made by this task (and the tasks it starts) have ``deadline``
    (None: no deadline), whatever the server's default: a protocol adapter says so once per
    call, before it decodes the request, and every inference the call makes is bounded by it
    (TF Serving's classify and regress included)."""
    token = give(deadline)
    try:
        yield
    finally:
        take_back(token)


def give(deadline: Deadline | None) -> contextvars.Token[tuple[Deadline | None] | None]:
    """``given`` without a context manager (a generator per call), for a protocol's hot path:
    pass the token to ``take_back`` when the call ends (in a ``finally``)."""
    return _GIVEN.set((deadline,))


def take_back(token: contextvars.Token[tuple[Deadline | None] | None]) -> None:
    """End what ``give`` set."""
    _GIVEN.reset(token)


def given_deadline() -> tuple[Deadline | None] | None:
    """What ``given`` set around this task: a 1-tuple of the deadline, or None if nothing."""
    return _GIVEN.get()


def current() -> RequestClock | None:
    """The clock of the request this task serves; None outside a request or without one."""
    return _CURRENT.get()


def remaining_ms() -> float | None:
    """Milliseconds left to the current request's deadline; None when it has none."""
    clock = _CURRENT.get()
    return clock.remaining_ms() if clock is not None else None


@contextlib.contextmanager
def serving(clock: RequestClock | None) -> Iterator[RequestClock | None]:
    """Make ``clock`` the current request's clock inside the block (this task only)."""
    token = serve(clock)
    try:
        yield clock
    finally:
        stop_serving(token)


def serve(clock: RequestClock | None) -> contextvars.Token[RequestClock | None]:
    """``serving`` without a context manager (a generator per call), for the data plane's hot
    path: pass the token to ``stop_serving`` when the request ends (in a ``finally``)."""
    return _CURRENT.set(clock)


def stop_serving(token: contextvars.Token[RequestClock | None]) -> None:
    """End what ``serve`` set."""
    _CURRENT.reset(token)


def context_with(clock: RequestClock | None) -> contextvars.Context:
    """A copy of the current context in which ``clock`` is current: for a task that serves
    other requests than the one that created it (a batch runs for all of its requests)."""
    context = contextvars.copy_context()
    context.run(_CURRENT.set, clock)
    return context


def latest(clocks: list[RequestClock]) -> Deadline | None:
    """The latest deadline of ``clocks``: work shared by these requests is still wanted until
    then. None when one of them has no deadline (it waits for as long as it takes)."""
    found: Deadline | None = None
    for clock in clocks:
        if clock.deadline is None:
            return None
        if found is None or clock.deadline.at > found.at:
            found = clock.deadline
    return found
