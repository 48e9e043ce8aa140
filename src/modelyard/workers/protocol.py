"""Typed messages between the front end and a worker process, and how they are framed.

A frame is::

    u32 header_len | u32 n_buffers | u64 body_len
    | header | n_buffers x (u64 len | bytes)

``body_len`` counts every byte after the 16-byte prefix, so a reader takes a whole frame in two
reads (the prefix, then the body) whatever number of tensors it carries.

The header names the message kind, its scalar fields and, for messages that carry tensors, each
tensor's name, datatype and shape: JSON, except for the two frames of every inference (INFER,
OUTPUTS), whose header is a binary head and a JSON descriptor (``modelyard.workers.inferframes``);
the tensor bytes follow as raw buffers in the raw layout of
``modelyard.codec`` (C order, little-endian; BYTES elements each a u32 length and bytes). So
nothing is pickled: a worker never unpickles data a client sent, and neither does the front end.
Errors travel as ``(code, message)`` (``ModelyardError.to_wire``).

Every request from the front end carries a ``request_id`` the reply repeats; replies may come back
in any order (the worker runs inferences concurrently).

This module turns any message into a frame and back (``encode``, ``decode``, ``split_prefix``,
``decode_body``). The rest of the protocol lives beside it: the message classes in
``messages``, the parts every frame is made of (prefix, lengths, tensors as raw buffers) in
``wire``, the INFER and OUTPUTS layout in ``inferframes``, and frames over the worker's
blocking socket in ``sockets``.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType, Signature, SignatureMethod, TensorSpec
from modelyard.workers import wire
from modelyard.workers.inferframes import decode_infer, decode_outputs, encode_infer, encode_outputs
from modelyard.workers.messages import (
    Cancel,
    Done,
    Error,
    Hello,
    Infer,
    Load,
    Loaded,
    Message,
    MessageKind,
    Outputs,
    Ping,
    Pong,
    ProtocolError,
    Report,
    Reported,
    Shutdown,
    Unload,
)
from modelyard.workers.wire import (
    LEN_BYTES,
    MAX_HEADER_BYTES,
    json_frame,
    tensor_from_buffer,
    tensor_parts,
)

# Assigned here, not imported by name: CPython compiles a method call on a name bound by
# ``import`` to an attribute load and a call (a bound method made on every call) where a name
# assigned in the module gets LOAD_METHOD; these methods run on every frame.
_PREFIX = wire.PREFIX
_LEN = wire.LEN
_CLASSES: dict[MessageKind, type[Message]] = {
    cls.KIND: cls
    for cls in (
        Hello,
        Load,
        Loaded,
        Unload,
        Done,
        Infer,
        Outputs,
        Error,
        Report,
        Reported,
        Shutdown,
        Ping,
        Pong,
        Cancel,
    )
}
_LOCAL_FIELDS = frozenset({"decoded_ns"})
"""Fields measured on the receiving side, never sent."""
_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name not in _LOCAL_FIELDS)
    for cls in _CLASSES.values()
}
"""Each message class's fields, listed once (``dataclasses.fields`` builds them on every call,
which was on every request)."""
_SIGNATURE_FIELDS = frozenset({"signature", "declared"})
_SIGNATURE_MAP_FIELDS = frozenset({"signatures"})
# Looked up once per frame, so by plain dicts and sets (an enum's call costs more).
_CLASS_OF_CODE: dict[int, type[Message]] = {int(kind): cls for kind, cls in _CLASSES.items()}
_WITH_TENSORS = frozenset(cls for cls, names in _FIELD_NAMES.items() if "tensors" in names)
_WITH_SIGNATURES = frozenset(
    cls
    for cls, names in _FIELD_NAMES.items()
    if (_SIGNATURE_FIELDS | _SIGNATURE_MAP_FIELDS) & set(names)
)
_INFER = int(MessageKind.INFER)
_OUTPUTS = int(MessageKind.OUTPUTS)
_perf_ns = time.perf_counter_ns


# -- signatures as JSON ------------------------------------------------------------------


def signature_to_json(signature: Signature) -> dict[str, Any]:
    def specs(items: Sequence[TensorSpec]) -> list[list[Any]]:
        return [[s.name, s.datatype.value, list(s.shape)] for s in items]

    return {
        "inputs": specs(signature.inputs),
        "outputs": specs(signature.outputs),
        "method": signature.method.value,
    }


def signature_from_json(data: Mapping[str, Any]) -> Signature:
    def specs(items: Iterable[Any]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(n, DataType(d), tuple(int(x) for x in s)) for n, d, s in items)

    return Signature(specs(data["inputs"]), specs(data["outputs"]), SignatureMethod(data["method"]))


# -- frames ------------------------------------------------------------------------------


def encode(message: Message) -> list[bytes | memoryview]:
    """The frame of ``message`` as a list of parts, for ``sendmsg``/``writelines`` (no join)."""
    if isinstance(message, Infer):
        return encode_infer(
            message.request_id,
            message.model,
            message.version,
            message.tensors,
            message.signature_name,
            message.budget_ms,
        )
    if isinstance(message, Outputs):
        return encode_outputs(message.request_id, message.tensors, message.compute_ns)
    buffers: list[bytes | memoryview] = []
    tensors: list[list[Any]] = []
    fields: dict[str, Any] = {}
    for name in _FIELD_NAMES[type(message)]:
        value = getattr(message, name)
        if name in _SIGNATURE_FIELDS and value is not None:
            fields[name] = signature_to_json(value)
        elif name in _SIGNATURE_MAP_FIELDS:
            fields[name] = {k: signature_to_json(v) for k, v in value.items()}
        elif name == "tensors":
            tensor_parts(value, tensors, buffers)
        else:
            fields[name] = value
    return json_frame(int(message.KIND), fields, tensors, buffers)


def decode(
    header: bytes | memoryview, buffers: Sequence[bytes | bytearray | memoryview]
) -> Message:
    """The message of a frame's header and buffers; ProtocolError when they do not make one."""
    try:
        if header:
            first = header[0]
            if first == _INFER:
                return decode_infer(header, buffers)
            if first == _OUTPUTS:
                return decode_outputs(header, buffers)
        data = orjson.loads(header)
        code = data["k"]
        fields = data["f"]
        cls = _CLASS_OF_CODE.get(code)
        if cls is None:
            cls = _CLASSES[MessageKind(code)]  # raises ValueError: not a message kind
        if cls in _WITH_SIGNATURES:
            for name in _SIGNATURE_FIELDS & fields.keys():
                if fields[name] is not None:
                    fields[name] = signature_from_json(fields[name])
            for name in _SIGNATURE_MAP_FIELDS & fields.keys():
                fields[name] = {k: signature_from_json(v) for k, v in fields[name].items()}
        metas = data["t"]
        if len(metas) != len(buffers):
            raise ProtocolError(f"{len(metas)} tensors described, {len(buffers)} buffers sent")
        if metas or cls in _WITH_TENSORS:
            began = _perf_ns()
            fields["tensors"] = {
                m[0]: tensor_from_buffer(m[1], m[2], b, m[0])
                for m, b in zip(metas, buffers, strict=True)
            }
            if cls is Infer:
                fields["decoded_ns"] = _perf_ns() - began
        return cls(**fields)
    except ProtocolError:
        raise
    # orjson's JSONDecodeError is a ValueError; struct.error when a head is cut short.
    except (KeyError, TypeError, ValueError, IndexError, struct.error, InvalidArgument) as exc:
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from exc


def split_prefix(prefix: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int]:
    """``(header_len, n_buffers, body_len)`` of a frame whose first ``PREFIX_BYTES`` bytes
    start at ``offset`` of ``prefix``."""
    header_len, n_buffers, body_len = _PREFIX.unpack_from(prefix, offset)
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {header_len} bytes")
    if header_len + n_buffers * LEN_BYTES > body_len:
        raise ProtocolError(f"frame body of {body_len} bytes cannot hold its header and lengths")
    return header_len, n_buffers, body_len


def decode_body(body: bytes | bytearray | memoryview, header_len: int, n_buffers: int) -> Message:
    """The message of a frame's body (every byte after the prefix): its header, then each
    buffer as a view of ``body`` (no copy; arrays built on a bytearray body are writable)."""
    view = memoryview(body)
    end = len(body)
    if n_buffers == 1 and header_len + LEN_BYTES <= end:
        # One tensor (a one-output model's every reply): its buffer is the rest of the body.
        start = header_len + LEN_BYTES
        if start + _LEN.unpack_from(view, header_len)[0] == end:
            return decode(view[:header_len], (view[start:],))
    buffers: list[memoryview] = []
    offset = header_len
    unpack = _LEN.unpack_from
    for _ in range(n_buffers):
        if offset + LEN_BYTES > end:
            raise ProtocolError("frame body ends inside a buffer's length")
        (size,) = unpack(view, offset)
        offset += LEN_BYTES
        if offset + size > end:
            raise ProtocolError(f"frame body ends inside a buffer of {size} bytes")
        buffers.append(view[offset : offset + size])
        offset += size
    if offset != end:
        raise ProtocolError(f"frame body of {end} bytes has {end - offset} bytes left over")
    return decode(view[:header_len], buffers)
