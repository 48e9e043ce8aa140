"""The two frames of every inference: INFER and OUTPUTS, which have a header of their own.

``encode_infer`` and ``encode_outputs`` write them; ``modelyard.workers.protocol``'s ``decode``
hands frames whose header starts with their kind's code to ``decode_infer`` and
``decode_outputs``.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelyard.workers import wire
from modelyard.workers.messages import (
    Infer,
    MessageKind,
    Outputs,
    ProtocolError,
    new_infer,
    new_outputs,
)
from modelyard.workers.wire import (
    LEN_BYTES,
    PADS,
    frame_parts,
    json_frame,
    tensor_from_buffer,
    tensor_parts,
)

# Assigned here, not imported by name: CPython compiles a method call on a name bound by
# ``import`` to an attribute load and a call (a bound method made on every call) where a name
# assigned in the module gets LOAD_METHOD; these methods run on every frame.
_LEN = wire.LEN
_WIRE_DTYPE_OF_NAME = wire.WIRE_DTYPE_OF_NAME
_INFER = int(MessageKind.INFER)
_OUTPUTS = int(MessageKind.OUTPUTS)
_perf_ns = time.perf_counter_ns

# -- the two frames of every inference ---------------------------------------------------
#
# INFER and OUTPUTS have a header of their own: a fixed binary head (the kind's code as its
# first byte, where a JSON header has ``{``; the request id and the numbers), then a
# *descriptor*: JSON of what stays the same from one request to the next (INFER: model,
# version, signature name and each tensor's name, datatype and shape; OUTPUTS: each tensor's),
# padded with spaces so that the first buffer starts 8-byte aligned. The encoder writes the
# descriptor with one ``orjson.dumps``; the decoder keeps the descriptors it has seen, parsed
# (``_InferDescriptor``, ``_Spec``), so a request like the last one costs a dict look-up instead
# of parsing JSON and building its dicts and lists, and each tensor is one ``np.ndarray`` call
# on its buffer. (Session 10 measured the JSON header's frames at 25-44k instructions per
# operation; a struct layout of every field, descriptor included, cost more: issue 18.)

_INFER_HEAD = struct.Struct("<BB6xQd")
"""kind, has a budget (0/1), request_id, budget_ms."""
_OUTPUTS_HEAD = struct.Struct("<BB6xQqqq")
"""kind, how many compute_ns (0-3), request_id, the compute_ns."""
_INFER_LEAD = struct.Struct("<IIQ" + _INFER_HEAD.format[1:])
_OUTPUTS_LEAD = struct.Struct("<IIQ" + _OUTPUTS_HEAD.format[1:])
"""The prefix and the head, packed in one call."""
_DESCRIPTORS_KEPT = 256
"""Descriptors each decoder keeps parsed (all are forgotten when more come: a client sending
ever new shapes costs a parse per request, as before, not memory)."""
_ndarray = np.ndarray


@dataclass(frozen=True, slots=True)
class _Spec:
    """One tensor of a descriptor: ``nbytes`` is its buffer's size when it can be viewed as it
    is (numeric, no dimension 0), else -1 (``tensor_from_buffer`` then reads or refuses it)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any] | None
    nbytes: int


@dataclass(frozen=True, slots=True)
class _InferDescriptor:
    model: str
    version: int
    signature_name: str | None
    specs: tuple[_Spec, ...]


_INFER_DESCRIPTORS: dict[bytes, _InferDescriptor] = {}
_OUTPUTS_DESCRIPTORS: dict[bytes, tuple[_Spec, ...]] = {}


def encode_infer(
    request_id: int,
    model: str,
    version: int,
    tensors: Mapping[str, np.ndarray],
    signature_name: str | None = None,
    budget_ms: float | None = None,
) -> list[bytes | memoryview]:
    """``encode(Infer(...))`` of these fields, without building the message."""
    buffers: list[bytes | memoryview] = []
    metas: list[list[Any]] = []
    tensor_parts(tensors, metas, buffers)
    descriptor = orjson.dumps([model, version, signature_name, metas])
    descriptor += PADS[-len(descriptor) % 8]
    header_len = _INFER_HEAD.size + len(descriptor)
    has_budget = budget_ms is not None
    budget = budget_ms if budget_ms is not None else 0.0
    if len(buffers) == 1:  # the common case, without the loop and the lists
        size = len(buffers[0])
        body_len = header_len + LEN_BYTES + size
        lead = _INFER_LEAD.pack(header_len, 1, body_len, _INFER, has_budget, request_id, budget)
        return [lead + descriptor + _LEN.pack(size), buffers[0]]
    head = _INFER_HEAD.pack(_INFER, has_budget, request_id, budget) + descriptor
    return frame_parts(head, buffers)


def encode_outputs(
    request_id: int, tensors: Mapping[str, np.ndarray], compute_ns: Sequence[int] = ()
) -> list[bytes | memoryview]:
    """``encode(Outputs(request_id, tensors, compute_ns))``, without building the message (the
    worker's reply to every inference). Two ``compute_ns`` (the worker's: decoding and the
    call) get the third, encoding these outputs, appended."""
    began = _perf_ns()
    buffers: list[bytes | memoryview] = []
    metas: list[list[Any]] = []
    tensor_parts(tensors, metas, buffers)
    count = len(compute_ns)
    compute: tuple[int, ...]
    if count == 2:
        compute = (compute_ns[0], compute_ns[1], _perf_ns() - began)
        count = 3
    elif count > 3:  # not the worker's; the JSON header carries any number
        fields = {"request_id": request_id, "compute_ns": compute_ns}
        return json_frame(_OUTPUTS, fields, metas, buffers)
    else:
        compute = (*compute_ns, 0, 0, 0)
    descriptor = orjson.dumps(metas)
    descriptor += PADS[-len(descriptor) % 8]
    header_len = _OUTPUTS_HEAD.size + len(descriptor)
    c0, c1, c2 = compute[0], compute[1], compute[2]
    if len(buffers) == 1:
        size = len(buffers[0])
        body_len = header_len + LEN_BYTES + size
        lead = _OUTPUTS_LEAD.pack(header_len, 1, body_len, _OUTPUTS, count, request_id, c0, c1, c2)
        return [lead + descriptor + _LEN.pack(size), buffers[0]]
    head = _OUTPUTS_HEAD.pack(_OUTPUTS, count, request_id, c0, c1, c2) + descriptor
    return frame_parts(head, buffers)


def _specs(metas: Any) -> tuple[_Spec, ...]:
    """A descriptor's tensors, checked; ProtocolError (through ``decode``) when malformed."""
    specs = []
    for name, datatype, dims in metas:
        shape = tuple(dims)
        if type(name) is not str or type(datatype) is not str:
            raise TypeError(f"tensor name {name!r} and datatype {datatype!r}")
        if any(type(d) is not int for d in shape):
            raise TypeError(f"tensor {name!r}: shape {dims!r}")
        dtype = _WIRE_DTYPE_OF_NAME.get(datatype)
        count = math.prod(shape)
        viewable = dtype is not None and count > 0 and min(shape, default=1) >= 0
        nbytes = count * dtype.itemsize if viewable and dtype is not None else -1
        specs.append(_Spec(name, datatype, shape, dtype, nbytes))
    return tuple(specs)


def _infer_descriptor(descriptor: bytes) -> _InferDescriptor:
    model, version, signature_name, metas = orjson.loads(descriptor)
    if type(model) is not str or type(version) is not int:
        raise TypeError(f"model {model!r} version {version!r}")
    if signature_name is not None and type(signature_name) is not str:
        raise TypeError(f"signature name {signature_name!r}")
    parsed = _InferDescriptor(model, version, signature_name, _specs(metas))
    if len(_INFER_DESCRIPTORS) >= _DESCRIPTORS_KEPT:
        _INFER_DESCRIPTORS.clear()
    _INFER_DESCRIPTORS[descriptor] = parsed
    return parsed


def _outputs_descriptor(descriptor: bytes) -> tuple[_Spec, ...]:
    specs = _specs(orjson.loads(descriptor))
    if len(_OUTPUTS_DESCRIPTORS) >= _DESCRIPTORS_KEPT:
        _OUTPUTS_DESCRIPTORS.clear()
    _OUTPUTS_DESCRIPTORS[descriptor] = specs
    return specs


def _tensors(
    specs: tuple[_Spec, ...], buffers: Sequence[bytes | bytearray | memoryview]
) -> dict[str, np.ndarray]:
    """Each spec's tensor on its buffer (a view; InvalidArgument when they disagree)."""
    if len(specs) != len(buffers):
        raise ProtocolError(f"{len(specs)} tensors described, {len(buffers)} buffers sent")
    tensors = {}
    for spec, buffer in zip(specs, buffers):  # noqa: B905 (as many of each: checked above)
        if len(buffer) == spec.nbytes:
            array = _ndarray(spec.shape, spec.dtype, buffer)
            if not array.flags.aligned:  # a frame not from ``encode``: copied, aligned
                array = array.copy()
        else:  # BYTES, an empty tensor, or a size that disagrees: the codec reads or refuses it
            array = tensor_from_buffer(spec.datatype, spec.shape, buffer, spec.name)
        tensors[spec.name] = array
    return tensors


def decode_infer(header: bytes | memoryview, buffers: Sequence[Any]) -> Infer:
    _, has_budget, request_id, budget = _INFER_HEAD.unpack_from(header)
    descriptor = bytes(header[_INFER_HEAD.size :])
    known = _INFER_DESCRIPTORS.get(descriptor)
    if known is None:
        known = _infer_descriptor(descriptor)
    began = _perf_ns()
    tensors = _tensors(known.specs, buffers)
    decoded_ns = _perf_ns() - began
    return new_infer(
        request_id,
        known.model,
        known.version,
        tensors,
        known.signature_name,
        budget if has_budget else None,
        decoded_ns,
    )


def decode_outputs(header: bytes | memoryview, buffers: Sequence[Any]) -> Outputs:
    _, count, request_id, c0, c1, c2 = _OUTPUTS_HEAD.unpack_from(header)
    descriptor = bytes(header[_OUTPUTS_HEAD.size :])
    specs = _OUTPUTS_DESCRIPTORS.get(descriptor)
    if specs is None:
        specs = _outputs_descriptor(descriptor)
    compute = (c0, c1, c2) if count == 3 else (c0, c1, c2)[:count]
    return new_outputs(request_id, _tensors(specs, buffers), compute)
