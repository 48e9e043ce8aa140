"""Typed messages between the front end and a worker process, and how they are framed.

A frame is::

    u32 header_len | u32 n_buffers | u64 body_len
    | header | n_buffers x (u64 len | bytes)

``body_len`` counts every byte after the 16-byte prefix, so a reader takes a whole frame in two
reads (the prefix, then the body) whatever number of tensors it carries.

The header names the message kind, its scalar fields and, for messages that carry tensors, each
tensor's name, datatype and shape: JSON, except for the two frames of every inference (INFER,
OUTPUTS), whose header is a binary head and a JSON descriptor (see "the two frames of every
inference" below); the tensor bytes follow as raw buffers in the raw layout of
``modelyard.codec`` (C order, little-endian; BYTES elements each a u32 length and bytes). So
nothing is pickled: a worker never unpickles data a client sent, and neither does the front end.
Errors travel as ``(code, message)`` (``ModelyardError.to_wire``).

Every request from the front end carries a ``request_id`` the reply repeats; replies may come back
in any order (the worker runs inferences concurrently).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import select
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import orjson

from modelyard import codec
from modelyard.errors import InvalidArgument, ModelyardError
from modelyard.tensors import DataType, Signature, SignatureMethod, TensorSpec

_PREFIX = struct.Struct("<IIQ")
_LEN = struct.Struct("<Q")
MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A header larger than this is a corrupt stream, not a message."""


class MessageKind(enum.IntEnum):
    """Every message that crosses the pipe. Front end -> worker unless marked."""

    HELLO = 1  # worker -> front end, once, before any framework is imported
    LOAD = 2
    LOADED = 3  # worker -> front end
    UNLOAD = 4
    DONE = 5  # worker -> front end: an UNLOAD or SHUTDOWN finished
    INFER = 6
    OUTPUTS = 7  # worker -> front end
    ERROR = 8  # worker -> front end: a request failed with (code, message)
    REPORT = 9
    REPORTED = 10  # worker -> front end
    SHUTDOWN = 11
    PING = 12  # the heartbeat; answered by the worker's reader, never queued behind inference
    PONG = 13  # worker -> front end
    CANCEL = 14  # an INFER whose caller is gone: skip it if it has not started (no reply)


class ProtocolError(Exception):
    """The byte stream is not a sequence of frames: a bug or a dying peer, never a client error."""


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message. ``kind`` is a class constant; fields are JSON scalars or lists."""

    KIND: ClassVar[MessageKind]
    request_id: int


@dataclass(frozen=True, slots=True)
class Hello(Message):
    KIND = MessageKind.HELLO
    pid: int
    device: str
    cuda_visible_devices: str | None


@dataclass(frozen=True, slots=True)
class Load(Message):
    """Load one model version; ``target`` is the device as the worker sees it (cpu, cuda:0)."""

    KIND = MessageKind.LOAD
    model: str
    version: int
    version_dir: str
    platform: str
    target: str
    declared: Signature | None = None


@dataclass(frozen=True, slots=True)
class Loaded(Message):
    """A load succeeded. ``measured_bytes``: memory the load added (RSS, or GPU bytes on CUDA);
    ``placed_on``: where the framework says the weights are (``cuda:0``, ``cpu``)."""

    KIND = MessageKind.LOADED
    signature: Signature
    measured_bytes: int
    placed_on: str
    signatures: Mapping[str, Signature] = field(default_factory=dict)
    """Every named signature, for models that have several (SavedModel); else empty."""


@dataclass(frozen=True, slots=True)
class Unload(Message):
    KIND = MessageKind.UNLOAD
    model: str
    version: int


@dataclass(frozen=True, slots=True)
class Done(Message):
    KIND = MessageKind.DONE


@dataclass(frozen=True, slots=True)
class Infer(Message):
    KIND = MessageKind.INFER
    model: str
    version: int
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    signature_name: str | None = None
    """None: the default signature."""
    budget_ms: float | None = None
    """Milliseconds left to the request's deadline when it was sent (None: no deadline). The
    worker skips the request, answering DEADLINE_EXCEEDED, when they have run out before an
    execution slot takes it. Relative, so the two processes need not share a clock."""
    decoded_ns: int = field(default=0, compare=False)
    """Not sent: what ``decode`` measured rebuilding ``tensors`` from the frame (Triton's
    compute_input), for the worker to send back with the outputs."""


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """The caller of the INFER ``request_id`` is gone (client disconnected, deadline passed):
    the worker drops it if it is still queued. No reply: the front end has stopped waiting."""

    KIND = MessageKind.CANCEL


@dataclass(frozen=True, slots=True)
class Outputs(Message):
    KIND = MessageKind.OUTPUTS
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    compute_ns: Sequence[int] = ()
    """Triton's (compute_input, compute_infer, compute_output) of this execution, in ns, as the
    worker measured them: decoding the request's tensors, the model's call, encoding these
    outputs into the frame. The worker gives the first two; ``encode`` appends the third (it
    is the one that encodes); empty when not measured."""


@dataclass(frozen=True, slots=True)
class Error(Message):
    KIND = MessageKind.ERROR
    code: str
    message: str

    @staticmethod
    def of(request_id: int, exc: ModelyardError) -> Error:
        code, message = exc.to_wire()
        return Error(request_id, code, message)

    def exception(self) -> ModelyardError:
        return ModelyardError.from_wire(self.code, self.message)


@dataclass(frozen=True, slots=True)
class Report(Message):
    KIND = MessageKind.REPORT


@dataclass(frozen=True, slots=True)
class Reported(Message):
    """What a worker holds, as it sees it (pid, device, CUDA_VISIBLE_DEVICES, models)."""

    KIND = MessageKind.REPORTED
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    KIND = MessageKind.SHUTDOWN


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Are you there? The worker answers ``Pong`` from the thread that reads the socket."""

    KIND = MessageKind.PING


@dataclass(frozen=True, slots=True)
class Pong(Message):
    KIND = MessageKind.PONG


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
_DATATYPE_OF_NAME: dict[str, DataType] = {t.value: t for t in DataType}
_WIRE_DTYPE_OF_NAME: dict[str, np.dtype[Any]] = {
    t.value: t.numpy.newbyteorder("<") for t in DataType if t is not DataType.BYTES
}
"""Each numeric type's dtype on the wire (little-endian)."""
_MAX_RANK = 32
_DATATYPE_OF_DTYPE: dict[np.dtype[Any], tuple[DataType, str, bool]] = {}
"""``DataType.from_numpy`` of the dtypes seen so far (it compares against every type), its name
(an enum's ``value`` is a Python call), and whether an array's bytes are the wire's as they are
(a numeric type, little-endian)."""


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


# -- tensors as raw buffers --------------------------------------------------------------


def tensor_from_buffer(
    datatype: str, shape: Sequence[Any], buffer: bytes | bytearray | memoryview, name: str = ""
) -> np.ndarray:
    """Rebuild tensor ``name`` from its datatype's name, shape and raw buffer; InvalidArgument
    if they disagree (``decode`` makes it a ProtocolError: a bad frame never becomes an
    answer)."""
    wire = _WIRE_DTYPE_OF_NAME.get(datatype)
    # The common case in a few C calls: a numeric tensor whose buffer holds exactly its
    # elements. Anything else (BYTES, a size that disagrees, a negative dimension) is left to
    # the codec, which names what is wrong. (``min`` without ``default=``: a keyword argument
    # costs the call as much again.)
    if wire is not None and len(shape) <= _MAX_RANK and (not shape or min(shape) >= 0):
        count = math.prod(shape)
        if count and len(buffer) == count * wire.itemsize:
            array = np.frombuffer(buffer, wire)
            if not array.flags.aligned:
                array = array.astype(wire.newbyteorder("="))
            return array.reshape(shape)
    known = _DATATYPE_OF_NAME.get(datatype) or DataType(datatype)  # the latter raises
    return codec.decode_raw(buffer, known, tuple(map(int, shape)), f"tensor {name!r}")


# -- frames ------------------------------------------------------------------------------


def _tensor_parts(
    arrays: Mapping[str, np.ndarray], metas: list[list[Any]], buffers: list[bytes | memoryview]
) -> None:
    """Append each array's ``[name, datatype, shape]`` to ``metas`` and its raw buffer to
    ``buffers``."""
    for name, array in arrays.items():
        dtype = array.dtype
        known = _DATATYPE_OF_DTYPE.get(dtype)
        if known is None:
            datatype = DataType.from_numpy(dtype)
            wire = datatype is not DataType.BYTES and dtype == datatype.numpy.newbyteorder("<")
            known = _DATATYPE_OF_DTYPE[dtype] = (datatype, datatype.value, wire)
        metas.append([name, known[1], array.shape])  # orjson writes a tuple as a list
        if known[2]:
            try:  # the array's own bytes, viewed (codec.raw_buffer's result, in one C call)
                buffers.append(array.data.cast("B"))
                continue
            except TypeError:  # not C-contiguous, or empty: the codec's way
                pass
        buffers.append(codec.raw_buffer(array, known[0]))


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
            _tensor_parts(value, tensors, buffers)
        else:
            fields[name] = value
    return _frame(int(message.KIND), fields, tensors, buffers)


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
_PADS = tuple(b" " * n for n in range(8))
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
    _tensor_parts(tensors, metas, buffers)
    descriptor = orjson.dumps([model, version, signature_name, metas])
    descriptor += _PADS[-len(descriptor) % 8]
    header_len = _INFER_HEAD.size + len(descriptor)
    has_budget = budget_ms is not None
    budget = budget_ms if budget_ms is not None else 0.0
    if len(buffers) == 1:  # the common case, without the loop and the lists
        size = len(buffers[0])
        body_len = header_len + LEN_BYTES + size
        lead = _INFER_LEAD.pack(header_len, 1, body_len, _INFER, has_budget, request_id, budget)
        return [lead + descriptor + _LEN.pack(size), buffers[0]]
    head = _INFER_HEAD.pack(_INFER, has_budget, request_id, budget) + descriptor
    return _lean_frame(head, buffers)


def encode_outputs(
    request_id: int, tensors: Mapping[str, np.ndarray], compute_ns: Sequence[int] = ()
) -> list[bytes | memoryview]:
    """``encode(Outputs(request_id, tensors, compute_ns))``, without building the message (the
    worker's reply to every inference). Two ``compute_ns`` (the worker's: decoding and the
    call) get the third, encoding these outputs, appended."""
    began = _perf_ns()
    buffers: list[bytes | memoryview] = []
    metas: list[list[Any]] = []
    _tensor_parts(tensors, metas, buffers)
    count = len(compute_ns)
    compute: tuple[int, ...]
    if count == 2:
        compute = (compute_ns[0], compute_ns[1], _perf_ns() - began)
        count = 3
    elif count > 3:  # not the worker's; the JSON header carries any number
        fields = {"request_id": request_id, "compute_ns": compute_ns}
        return _frame(_OUTPUTS, fields, metas, buffers)
    else:
        compute = (*compute_ns, 0, 0, 0)
    descriptor = orjson.dumps(metas)
    descriptor += _PADS[-len(descriptor) % 8]
    header_len = _OUTPUTS_HEAD.size + len(descriptor)
    c0, c1, c2 = compute[0], compute[1], compute[2]
    if len(buffers) == 1:
        size = len(buffers[0])
        body_len = header_len + LEN_BYTES + size
        lead = _OUTPUTS_LEAD.pack(header_len, 1, body_len, _OUTPUTS, count, request_id, c0, c1, c2)
        return [lead + descriptor + _LEN.pack(size), buffers[0]]
    head = _OUTPUTS_HEAD.pack(_OUTPUTS, count, request_id, c0, c1, c2) + descriptor
    return _lean_frame(head, buffers)


def _lean_frame(header: bytes, buffers: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The parts of a frame whose header (a multiple of 8 bytes) is ready: as ``_frame``'s."""
    if not buffers:
        return [_PREFIX.pack(len(header), 0, len(header)) + header]
    sizes = list(map(len, buffers))
    body_len = len(header) + LEN_BYTES * len(buffers) + sum(sizes)
    parts: list[bytes | memoryview] = [
        _PREFIX.pack(len(header), len(buffers), body_len) + header + _LEN.pack(sizes[0]),
        buffers[0],
    ]
    for index in range(1, len(buffers)):
        parts.append(_LEN.pack(sizes[index]))
        parts.append(buffers[index])
    return parts


def _frame(
    kind: int, fields: dict[str, Any], metas: list[list[Any]], buffers: list[bytes | memoryview]
) -> list[bytes | memoryview]:
    """The parts of one frame with a JSON header: the prefix, header and first buffer's length
    in one ``bytes``, then each buffer (a view, not copied) and the next one's length."""
    header = orjson.dumps({"k": kind, "f": fields, "t": metas})
    if not buffers:
        return [_PREFIX.pack(len(header), 0, len(header)) + header]
    # Spaces after the JSON, so that the first buffer starts 8-byte aligned in the body: an
    # array on an unaligned buffer is copied by the reader (``tensor_from_buffer``).
    header += _PADS[-(len(header) + LEN_BYTES) % 8]
    return _lean_frame(header, buffers)


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


def _decode_infer(header: bytes | memoryview, buffers: Sequence[Any]) -> Infer:
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


def _decode_outputs(header: bytes | memoryview, buffers: Sequence[Any]) -> Outputs:
    _, count, request_id, c0, c1, c2 = _OUTPUTS_HEAD.unpack_from(header)
    descriptor = bytes(header[_OUTPUTS_HEAD.size :])
    specs = _OUTPUTS_DESCRIPTORS.get(descriptor)
    if specs is None:
        specs = _outputs_descriptor(descriptor)
    compute = (c0, c1, c2) if count == 3 else (c0, c1, c2)[:count]
    return new_outputs(request_id, _tensors(specs, buffers), compute)


# A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (for
# ``Infer``'s seven, 1.3 µs against 0.3 µs for plain assignments); these build the same frozen
# messages through their slots' descriptors, about four times faster (issue 18).
_new = object.__new__
_set_request_id = Message.__dict__["request_id"].__set__
_set_infer = tuple(
    Infer.__dict__[name].__set__
    for name in ("model", "version", "tensors", "signature_name", "budget_ms", "decoded_ns")
)
_set_outputs = tuple(Outputs.__dict__[name].__set__ for name in ("tensors", "compute_ns"))


def new_infer(
    request_id: int,
    model: str,
    version: int,
    tensors: Mapping[str, np.ndarray],
    signature_name: str | None = None,
    budget_ms: float | None = None,
    decoded_ns: int = 0,
) -> Infer:
    """``Infer(request_id, model, ...)``, the same frozen message, built faster (see above)."""
    message = _new(Infer)
    _set_request_id(message, request_id)
    set_model, set_version, set_tensors, set_signature, set_budget, set_decoded = _set_infer
    set_model(message, model)
    set_version(message, version)
    set_tensors(message, tensors)
    set_signature(message, signature_name)
    set_budget(message, budget_ms)
    set_decoded(message, decoded_ns)
    return message


def new_outputs(
    request_id: int, tensors: Mapping[str, np.ndarray], compute_ns: Sequence[int] = ()
) -> Outputs:
    """``Outputs(request_id, tensors, compute_ns)``, built faster (see ``new_infer``)."""
    message = _new(Outputs)
    _set_request_id(message, request_id)
    _set_outputs[0](message, tensors)
    _set_outputs[1](message, compute_ns)
    return message


def decode(
    header: bytes | memoryview, buffers: Sequence[bytes | bytearray | memoryview]
) -> Message:
    """The message of a frame's header and buffers; ProtocolError when they do not make one."""
    try:
        if header:
            first = header[0]
            if first == _INFER:
                return _decode_infer(header, buffers)
            if first == _OUTPUTS:
                return _decode_outputs(header, buffers)
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


PREFIX_BYTES = _PREFIX.size
LEN_BYTES = _LEN.size


# -- blocking sockets (the worker's side) ------------------------------------------------


def send_message(sock: socket.socket, message: Message) -> None:
    """Write one frame with scatter/gather ``sendmsg`` (tensor buffers are not copied).

    Not thread-safe: callers that send from several threads hold one lock around it.
    """
    send_frame(sock, encode(message))


def send_frame(sock: socket.socket, frame: list[bytes | memoryview]) -> None:
    """Write the parts of one frame (``encode``'s, ``encode_outputs``'s), as ``send_message``."""
    sent = sock.sendmsg(frame)
    if sent == PREFIX_BYTES + _PREFIX.unpack_from(frame[0])[2]:  # all of it: the common case
        return
    parts = [memoryview(p).cast("B") for p in frame]
    while True:  # a large frame, in pieces as the socket takes them
        while parts and sent >= parts[0].nbytes:
            sent -= parts.pop(0).nbytes
        if not parts:
            return
        if sent:
            parts[0] = parts[0][sent:]
        sent = sock.sendmsg(parts)


def recv_message(sock: socket.socket) -> Message | None:
    """Read one frame; None at a clean end of stream (the peer closed or died)."""
    prefix = _recv_exactly(sock, PREFIX_BYTES)
    if prefix is None:
        return None
    header_len, n_buffers, body_len = split_prefix(prefix)
    body = _recv_exactly(sock, body_len) if body_len else bytearray()
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return decode_body(body, header_len, n_buffers)  # a bytearray: writable arrays


class FrameReader:
    """Reads frames from a blocking socket through a buffer: one ``recv`` usually brings a
    whole small frame (prefix and body), where ``recv_message`` makes a system call for each.
    A body larger than the buffer is read straight into its own bytearray. One thread at a
    time reads; the socket is read only through this.

    Each ``recv`` is preceded by a ``poll`` for input. A thread blocked in ``recv`` on a Unix
    socket sleeps on the socket's one wait queue, which is also woken whenever the peer
    consumes what this end sent (the kernel's "write space" wake-up): at one request in
    flight the worker's reader was woken for nothing after every reply, 1.8 sleeps per
    request instead of one. ``poll`` waits for input only, so the reader sleeps once per
    frame; the system call it adds costs far less than the wake-up it saves (issue 18).
    """

    def __init__(self, sock: socket.socket, buffer_bytes: int = 256 * 1024) -> None:
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self._start = 0  # unread bytes are self._buf[self._start:self._end]
        self._end = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet (more frames, or the rest of one)."""
        return self._end - self._start

    def read(self) -> Message | None:
        """The next message; None at a clean end of stream (the peer closed or died)."""
        if self._end - self._start < PREFIX_BYTES and not self._fill(PREFIX_BYTES):
            return None
        # The prefix is read where it lies, and a small frame came whole with it, usually.
        header_len, n_buffers, body_len = split_prefix(self._buf, self._start)
        start = self._start + PREFIX_BYTES
        stop = start + body_len
        if stop <= self._end:
            self._start = stop
            body = self._buf[start:stop]  # a copy: the buffer is reused
        else:
            self._start = start
            body = self._take(body_len)
        return decode_body(body, header_len, n_buffers)  # writable arrays, as recv_message's

    def _take(self, n: int) -> bytearray:
        """The next ``n`` bytes of a frame (a copy); ProtocolError when the stream ends first."""
        have = self._end - self._start
        if have < n and n > len(self._buf):  # larger than the buffer: its own array, one copy
            out = bytearray(n)
            out[:have] = self._view[self._start : self._end]
            self._start = self._end = 0
            view = memoryview(out)
            while have < n:
                self._poller.poll()
                k = self._sock.recv_into(view[have:])
                if k == 0:
                    raise ProtocolError("stream ended inside a frame")
                have += k
            return out
        if have < n and not self._fill(n):
            raise ProtocolError("stream ended inside a frame")
        start = self._start
        self._start = start + n
        return self._buf[start : start + n]

    def _fill(self, n: int) -> bool:
        """Receive until at least ``n`` bytes (no more than the buffer holds) are unread; False
        at an end of stream with nothing unread (between frames), ProtocolError at one inside
        a frame."""
        have = self._end - self._start
        if self._start:  # move the unread tail to the front to make room
            self._buf[:have] = self._view[self._start : self._end]
            self._start, self._end = 0, have
        while self._end < n:
            self._poller.poll()  # input only: see the class docstring
            k = self._sock.recv_into(self._view[self._end :])
            if k == 0:
                if self._end == 0:
                    return False
                raise ProtocolError("stream ended inside a frame")
            self._end += k
        return True


def _recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0:
                return None
            raise ProtocolError("stream ended inside a frame")
        got += k
    return buf
