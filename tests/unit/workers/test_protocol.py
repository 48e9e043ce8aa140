"""Framing and typed messages between front end and worker: round trips, errors, bad frames."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from modelyard.errors import InvalidArgument, ModelyardError, NotFound, Unavailable
from modelyard.tensors import DataType, Signature, SignatureMethod, TensorSpec
from modelyard.workers.messages import (
    Error,
    Hello,
    Infer,
    Load,
    Loaded,
    Outputs,
    ProtocolError,
    Reported,
    Shutdown,
    new_infer,
    new_outputs,
)
from modelyard.workers.protocol import decode, encode, split_prefix
from modelyard.workers.sockets import FrameReader, recv_message, send_message
from modelyard.workers.wire import PREFIX_BYTES


def _roundtrip(message: object) -> object:
    """Through a real socketpair, as the worker and front end talk."""
    a, b = socket.socketpair()
    with a, b:
        send_message(a, message)  # type: ignore[arg-type]
        return recv_message(b)


NUMERIC = [d for d in DataType if d is not DataType.BYTES]


@pytest.mark.parametrize("datatype", NUMERIC, ids=lambda d: d.value)
def test_every_numeric_datatype_round_trips_bit_exact(datatype: DataType) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5)) * 100).astype(datatype.numpy)
    got = _roundtrip(Infer(7, "m", 2, {"x": array}))
    assert isinstance(got, Infer)
    assert (got.request_id, got.model, got.version) == (7, "m", 2)
    out = got.tensors["x"]
    assert out.dtype == array.dtype
    assert out.shape == array.shape
    assert out.tobytes() == array.tobytes()
    assert out.flags.writeable  # backends (torch.from_numpy) may need writable arrays


def test_bytes_tensors_keep_every_element_including_empty_ones() -> None:
    array = np.array([[b"", b"abc"], [b"\x00\xff", b"text"]], dtype=object)
    got = _roundtrip(Outputs(1, {"s": array}))
    assert isinstance(got, Outputs)
    assert got.tensors["s"].shape == (2, 2)
    assert got.tensors["s"].tolist() == array.tolist()


def test_shapes_with_zero_rows_scalars_and_non_contiguous_views() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors: dict[str, np.ndarray] = {
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(3.5, np.float64),
        "view": base[:, ::2],  # not contiguous: sent as its values, in C order
        "big_endian": np.arange(4, dtype=">i4"),
    }
    got = _roundtrip(Outputs(2, tensors))
    assert isinstance(got, Outputs)
    for name, array in tensors.items():
        np.testing.assert_array_equal(got.tensors[name], array)
        assert got.tensors[name].shape == array.shape


def test_many_tensors_in_one_message_keep_their_names() -> None:
    tensors = {f"t{i}": np.full((2,), i, np.int32) for i in range(20)}
    got = _roundtrip(Outputs(3, tensors))
    assert isinstance(got, Outputs)
    assert list(got.tensors) == list(tensors)
    assert all(int(got.tensors[f"t{i}"][0]) == i for i in range(20))


def test_a_large_tensor_crosses_in_pieces() -> None:
    array = np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB
    a, b = socket.socketpair()
    received: list[object] = []
    reader = threading.Thread(target=lambda: received.append(recv_message(b)))
    reader.start()
    with a, b:
        send_message(a, Outputs(4, {"y": array}))
        reader.join(10)
    assert isinstance(received[0], Outputs)
    np.testing.assert_array_equal(received[0].tensors["y"], array)


def test_signatures_and_scalars_round_trip() -> None:
    sig = Signature(
        (TensorSpec("x", DataType.FP32, (-1, 4)), TensorSpec("ids", DataType.INT64, (-1,))),
        (TensorSpec("y", DataType.FP16, (-1, 2)),),
    )
    load = Load(5, "m", 3, str(Path("/tmp/m/3")), "onnx", "cuda:0", sig)
    assert _roundtrip(load) == load
    assert _roundtrip(Load(6, "m", 3, "/d", "onnx", "cpu", None)) == Load(
        6, "m", 3, "/d", "onnx", "cpu", None
    )
    loaded = Loaded(5, sig, 123456, "cuda:0")
    assert _roundtrip(loaded) == loaded
    classify = Signature(
        (TensorSpec("inputs", DataType.BYTES, (-1,)),),
        (TensorSpec("scores", DataType.FP32, (-1, 3)),),
        SignatureMethod.CLASSIFY,
    )
    named = Loaded(5, sig, 1, "cpu", {"serving_default": sig, "classify": classify})
    assert _roundtrip(named) == named
    infer = Infer(12, "m", 1, {"inputs": np.array([b"ex"], dtype=object)}, "classify")
    got = _roundtrip(infer)
    assert isinstance(got, Infer)
    assert got.signature_name == "classify"
    assert _roundtrip(Hello(0, 42, "sim0", None)) == Hello(0, 42, "sim0", None)
    report = Reported(9, {"pid": 1, "models": [{"model": "m", "measured_bytes": 10}]})
    assert _roundtrip(report) == report
    assert _roundtrip(Shutdown(10)) == Shutdown(10)


def test_the_workers_compute_times_cross_with_the_outputs_and_decoding_is_not_sent() -> None:
    # The front end's Infer: decoding it measures compute_input, which is never on the wire.
    infer = _roundtrip(Infer(7, "m", 1, {"x": np.ones((64, 64), np.float32)}))
    assert isinstance(infer, Infer)
    assert infer.decoded_ns > 0
    assert b"decoded_ns" not in b"".join(bytes(p) for p in encode(infer))
    # The worker's reply: its two times, and encoding adds the third (compute_output).
    reply = _roundtrip(Outputs(7, {"y": np.ones((64, 64), np.float32)}, (123, 4_567)))
    assert isinstance(reply, Outputs)
    assert list(reply.compute_ns[:2]) == [123, 4_567]
    assert reply.compute_ns[2] > 0


@pytest.mark.parametrize(
    "error", [NotFound("no such model"), InvalidArgument("bad x"), Unavailable("gone")]
)
def test_errors_cross_as_code_and_message(error: ModelyardError) -> None:
    got = _roundtrip(Error.of(11, error))
    assert isinstance(got, Error)
    rebuilt = got.exception()
    assert type(rebuilt) is type(error)
    assert rebuilt.message == error.message
    assert rebuilt.code is error.code


def test_end_of_stream_between_frames_is_none_inside_a_frame_an_error() -> None:
    a, b = socket.socketpair()
    a.close()
    assert recv_message(b) is None
    b.close()
    a, b = socket.socketpair()
    parts = encode(Outputs(1, {"y": np.ones(100, np.float32)}))
    frame = b"".join(bytes(p) for p in parts)
    a.sendall(frame[: len(frame) // 2])
    a.close()
    with pytest.raises(ProtocolError, match="inside a frame"):
        recv_message(b)
    b.close()


def _header(parts: list[bytes | memoryview]) -> bytes:
    """The JSON header of the frame ``parts`` (wherever ``encode`` split it)."""
    frame = b"".join(bytes(p) for p in parts)
    header_len = split_prefix(frame)[0]
    return frame[PREFIX_BYTES : PREFIX_BYTES + header_len]


def test_a_buffer_that_disagrees_with_its_shape_is_refused_not_misread() -> None:
    header = _header(encode(Outputs(1, {"y": np.ones((2, 3), np.float32)})))
    with pytest.raises(ProtocolError, match="expected 24 bytes"):
        decode(header, [b"\x00" * 20])
    with pytest.raises(ProtocolError, match="tensors described"):
        decode(header, [])
    with pytest.raises(ProtocolError, match="malformed"):
        decode(b'{"k": 99, "f": {}, "t": []}', [])
    with pytest.raises(ProtocolError, match="malformed"):
        decode(b"not json", [])
    bad_bytes = encode(Outputs(1, {"s": np.array([b"ab"], dtype=object)}))
    with pytest.raises(ProtocolError, match="BYTES"):
        decode(_header(bad_bytes), [b"\x05\x00\x00\x00ab"])


def test_the_buffered_reader_reads_frames_of_every_size_split_anywhere() -> None:
    """Frames sent back to back, cut into pieces at odd places (as a stream socket may deliver
    them), come out whole and in order, small tensors and one larger than the reader's buffer."""
    messages = [
        Infer(1, "m", 1, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}),
        Outputs(2, {"y": np.arange(300_000, dtype=np.float32)}),  # 1.2 MB, over the buffer
        Shutdown(3),
        Outputs(4, {"y": np.array([b"a", b""], dtype=object)}),
    ]
    stream = b"".join(bytes(p) for m in messages for p in encode(m))
    a, b = socket.socketpair()
    with a, b:

        def send_in_pieces() -> None:
            for start in range(0, len(stream), 7_777):
                a.sendall(stream[start : start + 7_777])
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_in_pieces)
        sender.start()
        reader = FrameReader(b, buffer_bytes=64 * 1024)
        got = [reader.read() for _ in messages]
        assert reader.read() is None  # a clean end between frames
        sender.join(10)
    assert [type(m) for m in got] == [type(m) for m in messages]
    assert [m.request_id for m in got if m is not None] == [1, 2, 3, 4]
    first, second = got[0], got[1]
    assert isinstance(first, Infer)
    assert isinstance(second, Outputs)
    np.testing.assert_array_equal(first.tensors["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(second.tensors["y"], np.arange(300_000, dtype=np.float32))
    second.tensors["y"][0] = 1.0  # writable, as the worker's models may need


def test_the_buffered_reader_reports_a_frame_cut_short() -> None:
    frame = b"".join(bytes(p) for p in encode(Outputs(1, {"y": np.ones(100, np.float32)})))
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame[: len(frame) // 2])
        a.close()
        with pytest.raises(ProtocolError, match="inside a frame"):
            FrameReader(b).read()


@pytest.mark.parametrize("name", ["y", "yy", "output_0", "a_longer_name_of_17"])
def test_a_tensor_is_read_in_place_whatever_the_header_length(name: str) -> None:
    """The first buffer starts aligned in the frame, so the reader's array is a view of the
    received bytes, not a copy (a copy per tensor per request, on both sides of the hop)."""
    sent = np.arange(6, dtype=np.float64).reshape(2, 3)
    got = _roundtrip(Outputs(7, {name: sent}))
    assert isinstance(got, Outputs)
    array = got.tensors[name]
    np.testing.assert_array_equal(array, sent)
    assert array.flags.aligned
    owner: object = array
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert owner is not None  # a view of the frame's body, not an array of its own


def test_the_fast_builders_make_the_same_frozen_messages() -> None:
    x = {"x": np.ones((1, 2), np.float32)}
    assert new_infer(3, "m", 2, x, "sig", 12.5, 7) == Infer(3, "m", 2, x, "sig", 12.5, 7)
    assert new_infer(3, "m", 2, x) == Infer(3, "m", 2, x)
    assert new_outputs(4, x, (1, 2, 3)) == Outputs(4, x, (1, 2, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        new_infer(3, "m", 2, x).model = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        new_outputs(4, x).tensors = {}  # type: ignore[misc]


def test_inferences_of_ever_new_shapes_and_names_each_decode_as_sent() -> None:
    """The decoder keeps the descriptors it has seen (model, names, shapes) parsed: frames that
    differ from the last ones only there, and more of them than it keeps, still decode as
    sent, with their budget and signature."""
    for index in range(600):
        rows = 1 + index % 300
        name = f"in{index % 7}"
        array = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) + index
        budget = None if index % 2 else float(index)
        signature = None if index % 3 else "classify"
        got = _roundtrip(
            Infer(index, f"m{index % 5}", 1 + index % 4, {name: array}, signature, budget)
        )
        assert isinstance(got, Infer)
        assert (got.request_id, got.model, got.version) == (index, f"m{index % 5}", 1 + index % 4)
        assert (got.signature_name, got.budget_ms) == (signature, budget)
        np.testing.assert_array_equal(got.tensors[name], array)
        back = _roundtrip(Outputs(index, {name: array, "y": array[:, :1]}, (1, index, 3)))
        assert isinstance(back, Outputs)
        assert list(back.compute_ns) == [1, index, 3]
        np.testing.assert_array_equal(back.tensors["y"], array[:, :1])


def test_a_cut_or_corrupt_inference_head_is_a_protocol_error() -> None:
    header = _header(encode(Infer(1, "m", 1, {"x": np.ones((2, 3), np.float32)})))
    with pytest.raises(ProtocolError, match="malformed"):
        decode(header[:10], [b"\x00" * 24])
    with pytest.raises(ProtocolError, match="malformed"):
        decode(header[:30] + b"]]]]" + header[34:], [b"\x00" * 24])
    with pytest.raises(ProtocolError, match="tensors described"):
        decode(header, [])
