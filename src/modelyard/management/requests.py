"""What every protocol's management calls share: who may call (REST headers, gRPC metadata),
and how a load's ``config`` parameter becomes a model entry.

The API is off unless the server has a token; then a call must present ``Bearer <token>``,
compared in constant time. Off: PermissionDenied (403) saying how to turn it on. Missing or
wrong token: Unauthenticated (401). Either way nothing changes.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from modelyard.errors import InvalidArgument, PermissionDenied, Unauthenticated
from modelyard.management.service import Management

OFF_MESSAGE = (
    "the management API is off; start the server with --management-token TOKEN (or set "
    "MODELYARD_MANAGEMENT_TOKEN) and send 'Authorization: Bearer TOKEN'"
)


def authorize(management: Management | None, token: str | None, authorization: str) -> Management:
    """The management service when ``authorization`` (``Bearer <token>``) is right; else raise."""
    if not token or management is None:
        raise PermissionDenied(OFF_MESSAGE)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Unauthenticated("missing or wrong management token (Authorization: Bearer)")
    return management


def model_entry(config: object) -> dict[str, Any] | None:
    """A load's ``config`` parameter as a model entry: Triton clients send it as a JSON string
    (REST ``parameters.config``, gRPC ``parameters["config"].string_param``); None if absent."""
    if config is None or config == "":
        return None
    if isinstance(config, str):
        try:
            config = orjson.loads(config)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"parameters.config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidArgument("parameters.config must be a JSON object (a model entry)")
    return config
