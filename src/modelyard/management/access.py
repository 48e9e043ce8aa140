"""Who may change the server: the one gate every entry point goes through.

Every REST route and every gRPC method is *guarded* unless it is listed here as *open*. Open
means it changes nothing and tells nothing about the host beyond what serving needs: health,
metadata, inference, status, metrics. Everything else (Triton's repository extension, modelyard's
move/re-plan/labels, TF Serving's ``HandleReloadConfigRequest``, and any endpoint added later
and not listed here) needs the management token. The REST app and the gRPC server apply
``Gate.check`` to every guarded entry before its handler runs, so a new endpoint is refused
by default rather than open by mistake.

Answers, for a guarded entry:

- no token configured (management off): PermissionDenied (403 / PERMISSION_DENIED) saying how
  to turn it on;
- a token configured, and the call does not present ``Bearer <token>``: Unauthenticated
  (401 / UNAUTHENTICATED).

Either way the handler never runs: nothing is read, parsed or changed. The messages name no
path of the host. Tokens are compared in constant time (as SHA-256 digests, so not even the
token's length shows in the timing).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass, field

from modelyard.errors import PermissionDenied, Unauthenticated

OFF_MESSAGE = (
    "the management API is off; start the server with --management-token TOKEN (or set "
    "MODELYARD_MANAGEMENT_TOKEN) and send 'Authorization: Bearer TOKEN'"
)
WRONG_TOKEN_MESSAGE = "missing or wrong management token (send 'Authorization: Bearer TOKEN')"


class Access(enum.Enum):
    """How an entry point is reached: by anyone, or only with the management token."""

    OPEN = "open"
    GUARDED = "guarded"


_KSERVE_MODEL = "/v2/models/{model}"
_KSERVE_VERSION = _KSERVE_MODEL + "/versions/{version}"

OPEN_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        # Operations: read-only views.
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/modelyard/v1/status"),
        ("GET", "/modelyard/v1/traffic"),
        ("GET", "/modelyard/v1/status/devices/{device:path}/report"),
        # TF Serving REST: status and metadata (GET), :predict/:classify/:regress (POST).
        ("GET", "/v1/models/{path:path}"),
        ("POST", "/v1/models/{path:path}"),
        # KServe v2 REST: health, metadata, readiness, inference.
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2"),
        ("GET", _KSERVE_MODEL),
        ("GET", _KSERVE_VERSION),
        ("GET", _KSERVE_MODEL + "/ready"),
        ("GET", _KSERVE_VERSION + "/ready"),
        ("POST", _KSERVE_MODEL + "/infer"),
        ("POST", _KSERVE_VERSION + "/infer"),
        # Triton's statistics and model configuration extensions: read-only views.
        ("GET", "/v2/models/stats"),
        ("GET", _KSERVE_MODEL + "/stats"),
        ("GET", _KSERVE_VERSION + "/stats"),
        ("GET", _KSERVE_MODEL + "/config"),
        ("GET", _KSERVE_VERSION + "/config"),
    }
)
"""(method, route path template) pairs anyone may call; HEAD counts as GET. Every other route
is guarded, including ``POST /v2/repository/index``: it changes nothing, but it is part of the
management API and its reasons name files on the host."""

OPEN_RPCS: frozenset[str] = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
        "/inference.GRPCInferenceService/ServerMetadata",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelStatistics",
        "/inference.GRPCInferenceService/ModelConfig",
        "/tensorflow.serving.PredictionService/Predict",
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        "/tensorflow.serving.PredictionService/Classify",
        "/tensorflow.serving.PredictionService/Regress",
        "/tensorflow.serving.ModelService/GetModelStatus",
    }
)
"""Full gRPC method names anyone may call. Every other method is guarded: KServe's
RepositoryIndex/ModelLoad/ModelUnload and TF Serving's HandleReloadConfigRequest."""


def route_access(method: str, path: str) -> Access:
    """How ``method`` on the route whose path template is ``path`` may be called."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    return Access.OPEN if (method, path) in OPEN_ROUTES else Access.GUARDED


def rpc_access(method: str) -> Access:
    """How the gRPC method ``/package.Service/Method`` may be called."""
    return Access.OPEN if method in OPEN_RPCS else Access.GUARDED


@dataclass(frozen=True, slots=True)
class Gate:
    """The management token, and the one check of what a caller presents against it.

    ``token`` None or empty: management is off and every guarded call is refused.
    """

    token: str | None = field(default=None, repr=False)

    @property
    def on(self) -> bool:
        return bool(self.token)

    def check(self, authorization: str) -> None:
        """Return when ``authorization`` (the ``Authorization`` header, or the gRPC
        ``authorization`` metadata) is ``Bearer <token>``; raise PermissionDenied when
        management is off, Unauthenticated otherwise."""
        if not self.token:
            raise PermissionDenied(OFF_MESSAGE)
        scheme, _, given = authorization.strip().partition(" ")
        # Digests of equal length: compare_digest's time then says nothing about the token.
        expected = hashlib.sha256(self.token.encode()).digest()
        presented = hashlib.sha256(given.strip().encode(errors="surrogateescape")).digest()
        matches = hmac.compare_digest(expected, presented)
        if scheme.lower() != "bearer" or not matches:
            raise Unauthenticated(WRONG_TOKEN_MESSAGE)
