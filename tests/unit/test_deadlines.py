"""Deadlines: which one a request gets, and what its error says."""

from __future__ import annotations

import pytest

from modelyard.deadlines import Deadline, DeadlinePolicy, Phase, RequestClock
from modelyard.errors import HTTP_STATUS, Code, DeadlineExceeded, ModelyardError


def test_rest_uses_tf_servings_flag_when_given_else_the_default() -> None:
    assert DeadlinePolicy(60_000).rest(start=0.0) == Deadline(60.0, 60_000, "--request-timeout-ms")
    given = DeadlinePolicy(60_000, rest_timeout_ms=500).rest(start=0.0)
    assert given == Deadline(0.5, 500, "--rest_api_timeout_in_ms")
    assert DeadlinePolicy(60_000, rest_timeout_ms=0).rest(start=0.0) is None  # 0: none
    assert DeadlinePolicy(0).rest(start=0.0) is None


@pytest.mark.parametrize(
    ("server_ms", "client_s", "at", "source"),
    [
        (1000, None, 1.0, "--request-timeout-ms"),  # no client deadline: the server's
        (1000, 0.2, 0.2, "the client's gRPC deadline"),  # sooner: the client's
        (1000, 5.0, 1.0, "--request-timeout-ms"),  # later: capped by the server's
        (0, 5.0, 5.0, "the client's gRPC deadline"),  # the server sets none
    ],
)
def test_grpc_takes_the_clients_deadline_capped_by_the_servers(
    server_ms: int, client_s: float | None, at: float, source: str
) -> None:
    deadline = DeadlinePolicy(server_ms).grpc(client_s, start=0.0)
    assert deadline is not None
    assert deadline.at == pytest.approx(at)
    assert deadline.source == source


def test_the_error_says_the_deadline_its_source_and_where_the_time_went() -> None:
    clock = RequestClock(Deadline(1.0, 1000, "--request-timeout-ms"), model="m", start=0.0)
    clock.device = "gpu1"
    clock.enter(Phase.BATCH_QUEUE, now=0.01)
    clock.enter(Phase.DEVICE, now=0.8)
    assert clock.expired(now=1.0)
    assert not clock.expired(now=0.9)
    error = clock.exceeded(now=1.05)
    assert error.message == (
        "deadline exceeded: the request's deadline of 1000 ms (--request-timeout-ms) passed "
        "after 1050 ms: 10 ms reading and checking the request, 790 ms queued in the batcher "
        "of model 'm', 250 ms queued or running on device gpu1"
    )


def test_deadline_exceeded_is_504_and_crosses_processes() -> None:
    error = DeadlineExceeded("late")
    assert HTTP_STATUS[error.code] == 504
    assert error.code is Code.DEADLINE_EXCEEDED
    assert isinstance(ModelyardError.from_wire(*error.to_wire()), DeadlineExceeded)


def test_remaining_ms_never_goes_below_zero() -> None:
    clock = RequestClock(Deadline(1.0, 1000, "x"), start=0.0)
    assert clock.remaining_ms(now=0.25) == pytest.approx(750)
    assert clock.remaining_ms(now=2.0) == 0.0
    assert RequestClock(None, start=0.0).remaining_ms(now=5.0) is None


def test_the_marks_are_the_phases_entered_in_order_however_the_clock_keeps_them() -> None:
    clock = RequestClock(None, start=1.0)
    assert (clock.marks, clock.phase) == ([(Phase.ADMITTED, 1.0)], Phase.ADMITTED)
    clock.enter(Phase.DEVICE, now=1.5)  # straight to the device: kept in slots
    assert clock.marks == [(Phase.ADMITTED, 1.0), (Phase.DEVICE, 1.5)]
    assert clock.phase is Phase.DEVICE
    assert clock.spent(now=2.0) == {Phase.ADMITTED: 0.5, Phase.DEVICE: 0.5}
    clock.enter(Phase.BATCH_QUEUE, now=1.6)  # then a batcher's queue, and the device again
    clock.enter(Phase.DEVICE, now=1.9)
    assert clock.marks == [
        (Phase.ADMITTED, 1.0),
        (Phase.DEVICE, 1.5),
        (Phase.BATCH_QUEUE, 1.6),
        (Phase.DEVICE, 1.9),
    ]
    assert (clock.phase, clock.device_at) == (Phase.DEVICE, 1.9)
    again = RequestClock(None, start=1.0)
    again.enter(Phase.DEVICE, now=1.1)
    again.enter(Phase.DEVICE, now=1.2)
    assert again.marks == [(Phase.ADMITTED, 1.0), (Phase.DEVICE, 1.1), (Phase.DEVICE, 1.2)]
