"""The one exception tree of modelyard, and the tables that map it onto wire protocols.

    ModelyardError            code: Code (neutral, like gRPC's status codes)
    ├── InvalidArgument       the request or config is malformed or does not match a signature
    ├── NotFound              unknown model, version or label (an unknown input or output
    │                         name is InvalidArgument: the request does not match a signature)
    ├── AlreadyExists
    ├── FailedPrecondition    the operation is valid but the state does not allow it
    ├── ResourceExhausted     a queue is full, a body too large, a plan does not fit
    │   └── DoesNotFit        a run-time change the planner cannot place (REST 507)
    ├── Unavailable           the model exists but cannot serve right now (loading, worker died)
    ├── DeadlineExceeded      the request's deadline passed before it was answered
    ├── Unauthenticated       a management call without a valid token
    ├── PermissionDenied      the management API is disabled
    ├── Unimplemented
    └── Internal              a bug, or a backend failing in a way we did not foresee

Domain code raises these; the HTTP and gRPC adapters translate ``code`` with ``HTTP_STATUS`` and
their own gRPC table. Across process boundaries only ``(code.value, message)`` travels, never a
pickled exception.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.Enum):
    """Neutral status codes; values are the canonical gRPC status names."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


# HTTP status for each code. TF Serving's REST API maps its gRPC-style status the same way
# (NOT_FOUND -> 404, INVALID_ARGUMENT -> 400, ...), so both REST adapters share this table.
HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.FAILED_PRECONDITION: 400,
    Code.RESOURCE_EXHAUSTED: 503,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
}


class ModelyardError(Exception):
    """Root of every error modelyard raises on purpose. ``message`` is shown to users as is."""

    code: ClassVar[Code] = Code.INTERNAL

    counted = False
    """Set once the data plane counted the request this error fails (statistics and metrics):
    the protocol boundary that answers it then counts nothing more."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> tuple[str, str]:
        """The (code, message) pair that crosses process boundaries."""
        return (self.code.value, self.message)

    @staticmethod
    def from_wire(code: str, message: str) -> ModelyardError:
        """Rebuild an error sent by ``to_wire`` in another process."""
        cls = _BY_CODE.get(Code(code), Internal)
        return cls(message)


class InvalidArgument(ModelyardError):
    code = Code.INVALID_ARGUMENT


class NotFound(ModelyardError):
    code = Code.NOT_FOUND


class AlreadyExists(ModelyardError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(ModelyardError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(ModelyardError):
    code = Code.RESOURCE_EXHAUSTED


class DoesNotFit(ResourceExhausted):
    """A management change (load, move, re-plan) the planner cannot place without evicting a
    serving model; the message is the planner's explanation. REST answers 507 (Insufficient
    Storage, as Triton-style repository APIs do for capacity), gRPC RESOURCE_EXHAUSTED."""


class Unavailable(ModelyardError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(ModelyardError):
    """The request's deadline (``--request-timeout-ms``, TF Serving's ``--rest_api_timeout_in_ms``
    or the client's gRPC deadline) passed; the message says the deadline and where the time
    went. HTTP 504, gRPC DEADLINE_EXCEEDED."""

    code = Code.DEADLINE_EXCEEDED


class Unauthenticated(ModelyardError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(ModelyardError):
    code = Code.PERMISSION_DENIED


class Unimplemented(ModelyardError):
    code = Code.UNIMPLEMENTED


class Internal(ModelyardError):
    code = Code.INTERNAL


class ConfigError(InvalidArgument):
    """A configuration file or flag is wrong; the message names the file, the key and the fix."""


class BackendMissing(FailedPrecondition):
    """A model needs a framework extra that is not installed; the message says what to install."""


_BY_CODE: dict[Code, type[ModelyardError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        Internal,
    )
}
