"""The reader role of a worker's socket moves to the second thread when an inline call runs long,
and the stream's end (or a failure) ends both threads (``modelyard.workers.handover``)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from modelyard.workers.handover import Handover

WAIT_S = 10.0


def _holding(release: threading.Event) -> Callable[[], None]:
    """A call that runs until ``release`` is set (at most ``WAIT_S``)."""

    def hold() -> None:
        release.wait(WAIT_S)

    return hold


class Frames:
    """A stand-in for the socket: ``read_loop`` takes "frames" (callables) from a queue; a frame
    returns False when its thread lost the reader role, an int to end the stream."""

    def __init__(self) -> None:
        self.frames: queue.Queue[object] = queue.Queue()
        self.readers: list[str] = []  # the thread that read each frame

    def read_loop(self) -> int | None:
        while True:
            frame = self.frames.get(timeout=WAIT_S)
            self.readers.append(threading.current_thread().name)
            if isinstance(frame, int):
                return frame
            if isinstance(frame, BaseException):
                raise frame
            assert callable(frame)
            if frame() is False:
                return None


def _serve(handover: Handover) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(handover.run())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, name="main-reader", daemon=True)
    thread.start()
    return thread, result


def test_a_long_inline_call_hands_the_reading_to_the_other_thread() -> None:
    frames = Frames()
    handover = Handover(frames.read_loop, poll_s=0.005)
    release = threading.Event()
    hold = _holding(release)
    kept: list[bool] = []
    read_during_call = threading.Event()

    def long_call() -> bool:
        kept.append(handover.run_inline(hold))
        return kept[-1]

    frames.frames.put(long_call)
    thread, result = _serve(handover)
    # The first call blocks its thread: the next frames are read by the other one meanwhile.
    frames.frames.put(read_during_call.set)
    assert read_during_call.wait(WAIT_S), "no frame was read while the inline call ran"
    assert frames.readers[0] != frames.readers[-1]
    release.set()
    frames.frames.put(7)
    thread.join(WAIT_S)
    assert result == [7]
    deadline = time.monotonic() + WAIT_S
    while not kept and time.monotonic() < deadline:  # the released call ends on its own
        time.sleep(0.01)
    assert kept[0] is False  # the first call's thread lost the role while it ran


def test_short_inline_calls_keep_the_reading_on_one_thread() -> None:
    frames = Frames()
    handover = Handover(frames.read_loop, poll_s=1.0)  # no look comes within these calls
    kept: list[bool] = []

    def short_call() -> bool:
        kept.append(handover.run_inline(lambda: None))
        return kept[-1]

    for _ in range(50):
        frames.frames.put(short_call)
    frames.frames.put(0)
    thread, result = _serve(handover)
    thread.join(WAIT_S)
    assert result == [0]
    assert kept == [True] * 50
    assert len(set(frames.readers)) == 1


def test_a_failure_on_the_second_thread_is_raised_by_run() -> None:
    frames = Frames()
    handover = Handover(frames.read_loop, poll_s=0.005)
    release = threading.Event()
    hold = _holding(release)
    frames.frames.put(lambda: handover.run_inline(hold))
    thread, result = _serve(handover)
    frames.frames.put(RuntimeError("a corrupt frame"))  # read by the thread that took over
    deadline = time.monotonic() + WAIT_S
    while len(frames.readers) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert frames.readers[1] != frames.readers[0]
    release.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(result) == 1
    assert isinstance(result[0], RuntimeError)
    assert "corrupt" in str(result[0])


def test_the_end_of_the_stream_ends_run_while_a_long_call_still_runs() -> None:
    """A worker never outlives its server: the end read by one thread returns at once, even
    while the other is still in a call that was handed over."""
    frames = Frames()
    handover = Handover(frames.read_loop, poll_s=0.005)
    release = threading.Event()
    frames.frames.put(lambda: handover.run_inline(_holding(release)))
    thread, result = _serve(handover)
    frames.frames.put(0)  # read by the thread that took over
    thread.join(WAIT_S / 2)
    try:
        assert result == [0]
        assert not release.is_set()
    finally:
        release.set()
