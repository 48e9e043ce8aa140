"""The messages between the front end and a worker process: their kinds, the classes (frozen
dataclasses, one per kind), ``ProtocolError``, and ``new_infer``/``new_outputs``, which build the
two messages of every inference faster than their constructors.

How a message becomes a frame is ``modelyard.workers.protocol``'s; this module knows no bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from modelyard.errors import ModelyardError
from modelyard.tensors import Signature


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
