"""What every protocol's management load shares: how its ``config`` parameter becomes a model
entry. (Who may call: ``modelyard.management.access``.)"""

from __future__ import annotations

from typing import Any

import orjson

from modelyard.errors import InvalidArgument


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
