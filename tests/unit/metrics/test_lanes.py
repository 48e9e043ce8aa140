"""Counting-only calls: no ``Call`` unless the call fails before the data plane counted it,
each request counted once on its protocol, and every success read back whatever the number of
requests noted but not yet added up."""

from __future__ import annotations

import contextvars
import time

from modelyard.deadlines import Phase, RequestClock
from modelyard.errors import Code, InvalidArgument
from modelyard.ids import VersionKey
from modelyard.metrics.stats import FOLD_EVERY, StatsBook
from modelyard.observability import calls
from modelyard.observability.calls import CURRENT, LANES, Protocol

KEY = VersionKey("m", 2)


def _clock() -> RequestClock:
    now = time.monotonic()
    clock = RequestClock(None, model="m", start=now - 0.002)
    clock.enter(Phase.DEVICE, now - 0.001)
    return clock


def test_a_counted_call_has_no_call_and_a_later_error_does_not_count_it_again() -> None:
    book = StatsBook()
    lane = LANES[Protocol.KSERVE_GRPC]

    def served() -> object:
        CURRENT.set(lane)
        book.ok(KEY, _clock(), 1)
        calls.note_error(InvalidArgument("the answer did not encode"))
        return CURRENT.get()

    ended = contextvars.copy_context().run(served)
    assert ended is lane.done  # counted by the data plane: the boundary has nothing to do
    stats = book.get(KEY)
    assert stats is not None
    assert stats.outcomes == {("kserve_grpc", "OK"): 1}


def test_a_call_refused_before_the_data_plane_gets_a_call_with_its_code() -> None:
    lane = LANES[Protocol.TFSERVING_REST]

    def refused() -> tuple[calls.Call | calls.Lane | None, int | None]:
        CURRENT.set(lane)
        assert calls.current() is None  # nothing failed yet: no Call
        first = calls.request_id()
        calls.note_error(InvalidArgument("bad body"))
        calls.note_status(404)  # a second note keeps the first code
        return CURRENT.get(), first

    ended, request_id = contextvars.copy_context().run(refused)
    assert isinstance(ended, calls.Call)
    assert (ended.protocol, ended.code, ended.counted) == (
        Protocol.TFSERVING_REST,
        Code.INVALID_ARGUMENT,
        False,
    )
    assert request_id is None  # no task: no request of its own to name


def test_every_success_is_read_back_on_its_protocol_across_folds() -> None:
    book = StatsBook()
    sent = 3 * FOLD_EVERY + 5
    for index in range(sent):
        lane = LANES[Protocol.KSERVE_REST if index % 3 else Protocol.KSERVE_GRPC]
        token = CURRENT.set(lane)
        try:
            book.ok(KEY, _clock(), 2)
        finally:
            CURRENT.reset(token)
    book.ok(KEY, _clock(), 1)  # no boundary: in process
    stats = book.get(KEY)
    assert stats is not None
    grpc = len(range(0, sent, 3))
    assert stats.outcomes == {
        ("kserve_rest", "OK"): sent - grpc,
        ("kserve_grpc", "OK"): grpc,
        ("in_process", "OK"): 1,
    }
    assert stats.success_count == stats.request_duration.count == sent + 1
    assert stats.inference_count == 2 * sent + 1
    assert stats.batches.keys() == {1, 2}
    assert stats.execution_count == sent + 1
    assert stats.success_ns >= (sent + 1) * 0.002e9
