"""The deadline and cancellation fields of the worker protocol survive a round trip."""

from __future__ import annotations

import numpy as np

from modelyard.workers.messages import Cancel, Infer
from modelyard.workers.protocol import decode_body, encode, split_prefix
from modelyard.workers.wire import PREFIX_BYTES


def _round_trip(message: object) -> object:
    frame = b"".join(bytes(p) for p in encode(message))  # type: ignore[arg-type]
    header_len, n_buffers, _ = split_prefix(frame)
    return decode_body(frame[PREFIX_BYTES:], header_len, n_buffers)


def test_infer_carries_the_time_left_to_its_deadline() -> None:
    sent = Infer(7, "m", 1, {"x": np.ones((1, 2), np.float32)}, None, 1234.5)
    got = _round_trip(sent)
    assert isinstance(got, Infer)
    assert got.budget_ms == 1234.5
    assert Infer(8, "m", 1).budget_ms is None  # no deadline by default


def test_cancel_names_the_request_it_withdraws() -> None:
    assert _round_trip(Cancel(7)) == Cancel(7)
